package host

import "sync"

// queues are Envoy's shared queues: keyed by (vm_id, name), process-wide;
// registering again replaces the consumer.
type queues struct {
	mu     sync.Mutex
	nextID uint32
	byName map[[2]string]*sharedQueue
	byID   map[uint32]*sharedQueue
}

type sharedQueue struct {
	id       uint32
	items    [][]byte
	consumer *instance
	rootID   uint32
}

func newQueues() *queues {
	return &queues{byName: map[[2]string]*sharedQueue{}, byID: map[uint32]*sharedQueue{}}
}

func (q *queues) register(vmID, name string, consumer *instance, rootID uint32) uint32 {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := [2]string{vmID, name}
	sq := q.byName[k]
	if sq == nil {
		q.nextID++
		sq = &sharedQueue{id: q.nextID}
		q.byName[k] = sq
		q.byID[sq.id] = sq
	}
	sq.consumer, sq.rootID = consumer, rootID
	return sq.id
}

func (q *queues) resolve(vmID, name string) (uint32, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	sq := q.byName[[2]string{vmID, name}]
	if sq == nil {
		return 0, false
	}
	return sq.id, true
}

// enqueue appends data and returns the consumer to notify.
func (q *queues) enqueue(id uint32, data []byte) (consumer *instance, rootID uint32, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	sq := q.byID[id]
	if sq == nil {
		return nil, 0, false
	}
	sq.items = append(sq.items, data)
	return sq.consumer, sq.rootID, true
}

// dequeue pops the oldest item: status NOT_FOUND for an unknown queue, EMPTY
// for an empty one.
func (q *queues) dequeue(id uint32) ([]byte, uint32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	sq := q.byID[id]
	if sq == nil {
		return nil, statusNotFound
	}
	if len(sq.items) == 0 {
		return nil, statusEmpty
	}
	v := sq.items[0]
	sq.items[0] = nil
	sq.items = sq.items[1:]
	return v, statusOK
}

// notify runs on_queue_ready on the consumer's VM, later and serialized with
// its other calls (never from inside the enqueuing call).
func notifyQueue(consumer *instance, rootID, queueID uint32) {
	if consumer == nil {
		return
	}
	consumer.host.inflight.Add(1)
	go func() {
		defer consumer.host.inflight.Add(-1)
		consumer.mu.Lock()
		defer consumer.mu.Unlock()
		if consumer.dead {
			return
		}
		if _, ok := consumer.roots[rootID]; !ok {
			return
		}
		_, _ = consumer.call(consumer.fn.queueReady, rootID, uint64(rootID), uint64(queueID))
	}()
}
