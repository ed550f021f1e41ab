package input

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrClosed is returned by Read after Close, and by a Read that Close
	// interrupted.
	ErrClosed = errors.New("input: source closed")
	// ErrContentType means an HTTP server answered with a Content-Type that
	// is not an MP3 stream. It is permanent: the source does not retry.
	ErrContentType = errors.New("input: response is not an MP3 stream")
	// ErrHTTPStatus is wrapped by every *StatusError.
	ErrHTTPStatus = errors.New("input: unexpected HTTP status")
	// ErrConnectTimeout means an HTTP server did not answer within
	// HTTPConfig.ConnectTimeout.
	ErrConnectTimeout = errors.New("input: connect timeout")
	// ErrHeaderTimeout is wrapped by every *HeaderTimeoutError.
	ErrHeaderTimeout = errors.New("input: response header timeout")
	// ErrStalled means an HTTP stream delivered no byte for
	// HTTPConfig.StallTimeout; the source drops the connection and
	// reconnects.
	ErrStalled = errors.New("input: stream stalled")
	// ErrBadMetaint means an HTTP server sent an icy-metaint header that is
	// not a number in 1..MaxMetaint. It is permanent.
	ErrBadMetaint = errors.New("input: bad icy-metaint")
)

// StatusError is the error for an HTTP response whose status is not 200 OK.
// Client errors (4xx) other than 408 and 429 are permanent; the source
// retries the others.
type StatusError struct {
	URL        string
	StatusCode int
	Status     string // as the server sent it, e.g. "404 Not Found"
}

// Error describes the response.
func (e *StatusError) Error() string {
	return fmt.Sprintf("input: %s: HTTP status %s", e.URL, e.Status)
}

// Unwrap returns ErrHTTPStatus.
func (e *StatusError) Unwrap() error { return ErrHTTPStatus }

// permanent reports whether retrying the request cannot help.
func (e *StatusError) permanent() bool {
	c := e.StatusCode
	return c >= 400 && c < 500 && c != 408 && c != 429
}

// HeaderTimeoutError is the error for a server that did not send its
// response headers within HTTPConfig.HeaderTimeout of the request.
type HeaderTimeoutError struct {
	URL     string
	Timeout time.Duration
	// Partial is set when the server began its response: it sent bytes
	// but never the end of its headers.
	Partial bool
}

// Error describes what the server did.
func (e *HeaderTimeoutError) Error() string {
	if e.Partial {
		return fmt.Sprintf("input: %s: the server began its response but did not finish its headers within %v", e.URL, e.Timeout)
	}
	return fmt.Sprintf("input: %s: the server sent no response within %v", e.URL, e.Timeout)
}

// Unwrap returns ErrHeaderTimeout.
func (e *HeaderTimeoutError) Unwrap() error { return ErrHeaderTimeout }
