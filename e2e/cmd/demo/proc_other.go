//go:build !linux

package main

import "syscall"

// childAttr: without Linux's parent-death signal, children are only
// stopped by the demo's own shutdown.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
