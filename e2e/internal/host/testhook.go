package host

import (
	"errors"
	"fmt"
)

// errFailedByTest is the cause logged for a VM failed through
// FailQueueConsumerAfterTick.
var errFailedByTest = errors.New("trap injected by the test after on_tick")

// FailQueueConsumerAfterTick fails, right after its next on_tick returns,
// the VM that consumes the shared queue name of vmID (the one that
// registered it last), as a trap at the end of that callback would: its
// timers and callouts die, shared data and the queue's contents stay,
// wasm_host.vm_failed counts it, and a worker VM is reloaded under
// FAIL_RELOAD. No other call into the VM runs between that on_tick and the
// failure. It returns the VM's name. Tests use it to kill keygate's
// sync lease holder (the VM that registered keygate/usage last: the sync
// service or a worker).
func (h *Host) FailQueueConsumerAfterTick(vmID, name string) (string, error) {
	h.queues.mu.Lock()
	sq := h.queues.byName[[2]string{vmID, name}]
	var in *instance
	if sq != nil {
		in = sq.consumer
	}
	h.queues.mu.Unlock()
	if in == nil {
		return "", fmt.Errorf("host: no consumer of queue %q in vm_id %q", name, vmID)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.dead {
		return "", fmt.Errorf("host: the consumer of queue %q (%s) is already dead", name, in.name)
	}
	in.failAfterTick = true
	return in.name, nil
}

// QueueConsumer names the VM that consumes the shared queue name of vmID
// (the one that registered it last) and reports whether it is alive. Tests
// use it to tell which VM holds keygate's sync lease: the holder registers
// keygate/usage when it starts syncing.
func (h *Host) QueueConsumer(vmID, name string) (vm string, alive bool, err error) {
	h.queues.mu.Lock()
	sq := h.queues.byName[[2]string{vmID, name}]
	var in *instance
	if sq != nil {
		in = sq.consumer
	}
	h.queues.mu.Unlock()
	if in == nil {
		return "", false, fmt.Errorf("host: no consumer of queue %q in vm_id %q", name, vmID)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.name, !in.dead, nil
}
