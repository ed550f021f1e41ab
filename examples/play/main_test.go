package main

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/playout"
)

// TestWAVMatchesMpg123 plays every file of the decoder matrix with -wav,
// in fake time, and compares the WAV with mpg123's decode: bit for bit
// with the default engine (libmpg123). playout's
// TestMatrixMatchesReferences compares the same path with ffmpeg too.
func TestWAVMatchesMpg123(t *testing.T) {
	if playout.DefaultEngine.Resolve() != playout.Mpg123 {
		t.Skip("built without cgo: the default decoder is go-mp3, not exact")
	}
	if _, err := exec.LookPath("mpg123"); err != nil {
		t.Skip("mpg123 not installed (.ci/setup installs it)")
	}
	paths, err := filepath.Glob(filepath.Join("..", "..", "testdata", "matrix", "*.mp3"))
	require.NoError(t, err)
	require.NotEmpty(t, paths)
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".mp3"), func(t *testing.T) {
			t.Parallel()
			wav := filepath.Join(t.TempDir(), "out.wav")
			synctest.Test(t, func(t *testing.T) {
				require.NoError(t, run(context.Background(), path, wav, false, playout.DefaultTarget))
			})
			b, err := os.ReadFile(wav)
			require.NoError(t, err)
			require.Greater(t, len(b), 44)
			require.Equal(t, "data", string(b[36:40]))
			require.EqualValues(t, len(b)-44, binary.LittleEndian.Uint32(b[40:]))
			want, err := exec.Command("mpg123", "--no-gapless", "--stereo", "-q", "-s", path).Output()
			require.NoError(t, err)
			require.Equal(t, len(want), len(b)-44, "PCM length")
			require.True(t, string(want) == string(b[44:]), "PCM differs from mpg123's")
		})
	}
}
