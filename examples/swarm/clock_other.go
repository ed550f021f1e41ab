//go:build !unix

package main

import "time"

// cpuTime is 0 where the process's CPU time is not read: the CPU figures
// then say 0.
func cpuTime() time.Duration { return 0 }

// wallClock is 0 where the machine's clock is not read past a synctest
// bubble: the fake-time run's wall-time figure then says 0.
func wallClock() time.Duration { return 0 }
