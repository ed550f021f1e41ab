//go:build !cgo || nompg123

package playout

import "fmt"

// haveMpg123 is false in builds without cgo, or with the nompg123 tag (a
// cgo build on a machine without libmpg123-dev): libmpg123 is not linked.
const haveMpg123 = false

func newMpg123() (engine, error) {
	return nil, fmt.Errorf("%w: %v needs cgo and libmpg123 (and no nompg123 build tag)", ErrBadConfig, Mpg123)
}
