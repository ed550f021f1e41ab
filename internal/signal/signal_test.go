package signal

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseChecksEachTypesFields(t *testing.T) {
	key := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		msg string
		ok  bool
	}{
		{`{"type":"hello","key":"` + key + `","upload_kbps":300}`, true},
		{`{"type":"hello","key":"` + key + `","upload_kbps":300,"extra":1}`, true},
		{`{"type":"hello","key":"` + key + `"}`, false},
		{`{"type":"hello","key":"abcd","upload_kbps":0}`, false},
		{`{"type":"hello","key":"` + strings.Repeat("zz", 32) + `","upload_kbps":0}`, false},
		{`{"type":"candidates"}`, true},
		{`{"type":"offer","to":"node","link":1,"sdp":"v=0"}`, true},
		{`{"type":"offer","to":"","link":1,"sdp":"v=0"}`, false},
		{`{"type":"offer","to":"node","sdp":"v=0"}`, false},
		{`{"type":"answer","to":"abc","link":2,"sdp":"v=0"}`, true},
		{`{"type":"answer","to":"abc","link":"2","sdp":"v=0"}`, false},
		{`{"type":"stats","stats":{"playing":true,"continuity":1,"depth":-1,"parent":null,"children":[],"startupMs":null}}`, true},
		{`{"type":"stats","stats":3}`, false},
		{`{"type":"stats"}`, false},
		{`{"type":"dance"}`, false},
		{`{}`, false},
		{`[]`, false},
		{`hello`, false},
	} {
		_, err := Parse([]byte(tc.msg))
		if tc.ok {
			require.NoError(t, err, tc.msg)
		} else {
			require.ErrorIs(t, err, ErrBadMessage, tc.msg)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"type":"hello","key":"` + strings.Repeat("ab", 32) + `","upload_kbps":300}`,
		`{"type":"offer","to":"node","link":1,"sdp":"v=0"}`,
		`{"type":"stats","stats":{"playing":true}}`,
		`{"type":"candidates"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			require.ErrorIs(t, err, ErrBadMessage)
			return
		}
		switch m.Type {
		case "hello":
			require.NotNil(t, m.Key)
			require.NotNil(t, m.UploadKbps)
		case "offer", "answer":
			require.NotNil(t, m.Link)
			require.NotNil(t, m.SDP)
			require.NotEmpty(t, *m.To)
		}
	})
}
