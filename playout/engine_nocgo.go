//go:build !cgo

package playout

import "fmt"

// haveMpg123 is false in builds without cgo: libmpg123 cannot be linked.
const haveMpg123 = false

func newMpg123() (engine, error) {
	return nil, fmt.Errorf("%w: %v needs cgo", ErrBadConfig, Mpg123)
}
