// Package testhook holds switches that the module's own tests flip to
// compare a behaviour with its absence in a whole process (a node the test
// binary runs in a namespace of its own). It is internal: no program
// outside the module can reach it, and nothing in the module sets it but
// tests.
package testhook

import "sync/atomic"

// NoShed makes the overload policy of every node in the process judge and
// log as usual but shed no child and cap no slot (control/overload.go): the
// baseline that shows what shedding does.
var NoShed atomic.Bool
