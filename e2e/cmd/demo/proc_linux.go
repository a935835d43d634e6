package main

import "syscall"

// childAttr puts a child in its own process group, so a terminal's Ctrl-C
// reaches only the demo, which stops the children in order; and has the
// kernel send it SIGTERM if the demo dies without stopping it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
