package netstack

import (
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
)

// countingBind wraps the device's UDP transport to see what the counters of
// wireguard-go do not: datagrams that arrive but are not valid WireGuard
// (garbage, or a handshake made with other keys), and errors sending (no
// route to the endpoint). An attempt that fails says which it was.
type countingBind struct {
	conn.Bind
	received atomic.Uint64 // datagrams received, valid or not

	// mu guards sendErr: the last error sending, cleared by a success.
	mu      sync.Mutex
	sendErr error
}

func (b *countingBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, f := range fns {
		fns[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := f(packets, sizes, eps)
			b.received.Add(uint64(n))
			return n, err
		}
	}
	return fns, actual, err
}

func (b *countingBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := b.Bind.Send(bufs, ep)
	b.mu.Lock()
	b.sendErr = err
	b.mu.Unlock()
	return err
}

func (b *countingBind) lastSendErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sendErr
}
