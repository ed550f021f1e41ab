//go:build !linux

package netlab

import (
	"fmt"
	"os/exec"
	"runtime"
	"time"
)

func platformOK() error {
	return fmt.Errorf("%w: network namespaces need Linux, not %s", ErrUnavailable, runtime.GOOS)
}

func doInNamespace(string, func() error) error { return platformOK() }
func ownGroup(*exec.Cmd)                       {}
func killGroup(int)                            {}
func processAlive(int) bool                    { return true }

type delayer struct{}

func startDelay(*Host, uint16, time.Duration) (*delayer, error) { return nil, platformOK() }
func (*delayer) close()                                         {}
