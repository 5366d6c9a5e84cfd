// Package state is warren's tunnel state machine.
//
// It owns the decision of what the tunnel should be doing and when traffic is
// allowed, and nothing else: it opens no sockets, knows nothing of WireGuard,
// gVisor, nftables or SOCKS, and talks to the world only through two small
// interfaces declared here: a Tunnel it starts and stops, and a Policy it
// applies on every transition (the proxy gate, a firewall).
//
// The design follows Mullvad's talpid and is written out in DESIGN.md. Decide
// apart from act: next (next.go) is a pure function holding the whole
// transition table; Machine (machine.go) is the single goroutine that feeds it
// inputs, applies the new state's policy, publishes the snapshot, and only
// then carries out the effects. An observer that sees Connected therefore
// knows traffic is already allowed, and one that sees anything else knows it
// is already blocked.
package state

import (
	"errors"
	"fmt"
	"time"
)

// State is one of the five states of the tunnel.
type State uint8

const (
	// Disconnected: nothing is running; every flow is refused.
	Disconnected State = iota
	// Connecting: an attempt is under way (or waiting to start); every flow is
	// refused.
	Connecting
	// Connected: the tunnel is verified up; flows go through it.
	Connected
	// Disconnecting: the tunnel is being torn down; every flow is refused and
	// live ones have been closed. What comes next is in Snapshot.After.
	Disconnecting
	// Error: an unrecoverable failure; every flow is refused until a command.
	Error
)

var stateNames = [...]string{
	Disconnected:  "disconnected",
	Connecting:    "connecting",
	Connected:     "connected",
	Disconnecting: "disconnecting",
	Error:         "error",
}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", s)
}

// After is what a Disconnecting state leads to once the tunnel is closed.
type After uint8

const (
	// AfterNothing leads to Disconnected.
	AfterNothing After = iota
	// AfterReconnect leads to Connecting, at attempt Snapshot.Attempt.
	AfterReconnect
	// AfterBlock leads to Error with Snapshot.Cause.
	AfterBlock
)

var afterNames = [...]string{
	AfterNothing:   "nothing",
	AfterReconnect: "reconnect",
	AfterBlock:     "block",
}

func (a After) String() string {
	if int(a) < len(afterNames) {
		return afterNames[a]
	}
	return fmt.Sprintf("After(%d)", a)
}

// Cause says why the tunnel is not (or no longer) connected. Causes are
// stable strings: users see them, scripts may match them.
type Cause string

const (
	CauseNone Cause = ""

	// Recoverable causes: the machine retries in Connecting.

	// CauseEndpointResolution: the peer's endpoint host name did not resolve.
	CauseEndpointResolution Cause = "endpoint-resolution"
	// CauseHandshakeTimeout: no handshake completed before the attempt's
	// deadline.
	CauseHandshakeTimeout Cause = "handshake-timeout"
	// CauseVerificationTimeout: a handshake completed but nothing came back
	// through the tunnel before the attempt's deadline.
	CauseVerificationTimeout Cause = "verification-timeout"
	// CauseNetworkUnreachable: the host could not send to the endpoint.
	CauseNetworkUnreachable Cause = "network-unreachable"
	// CauseLivenessLost: a connected tunnel stopped receiving.
	CauseLivenessLost Cause = "liveness-lost"

	// Unrecoverable causes: the machine goes to Error and waits for a command.

	// CauseInvalidConfig: the configuration cannot be used.
	CauseInvalidConfig Cause = "invalid-config"
	// CauseTunnelDevice: the tunnel device could not be created or configured.
	CauseTunnelDevice Cause = "tunnel-device"
	// CauseFirewall: a state's firewall policy could not be applied.
	CauseFirewall Cause = "firewall"
	// CauseRouting: routes or routing rules could not be set.
	CauseRouting Cause = "routing"
	// CauseDNSConfig: the system's DNS configuration could not be set.
	CauseDNSConfig Cause = "dns-config"
)

// Recoverable reports whether a failure with this cause is retried in
// Connecting rather than ending in Error. Backends use it as the default when
// reporting a failure.
func (c Cause) Recoverable() bool {
	switch c {
	case CauseEndpointResolution, CauseHandshakeTimeout, CauseVerificationTimeout,
		CauseNetworkUnreachable, CauseLivenessLost:
		return true
	}
	return false
}

// Snapshot is the machine's state at one moment, with what that state
// carries. It is a comparable value; the zero Snapshot is Disconnected.
type Snapshot struct {
	State State
	// Attempt is the attempt number in Connecting, and the attempt a
	// Disconnecting(AfterReconnect) will resume at.
	Attempt int
	// Cause is the last failure in Connecting, the cause in Error and in
	// Disconnecting(AfterBlock), and why the tunnel went down in a
	// Disconnecting(AfterReconnect) that the backend started.
	Cause Cause
	// Detail is a human-readable explanation of Cause (never a secret).
	Detail string
	// After is what Disconnecting leads to.
	After After
	// BlockFailed is set in Error when the blocking policy itself could not be
	// applied: traffic may not be blocked.
	BlockFailed bool
	// Config is the path of the configuration in use: the one being tried
	// in Connecting, the one that connected in Connected.
	Config string
	// Endpoint is the peer endpoint in use while Connected.
	Endpoint string
	// Lockdown asks the policy to block even in Disconnected.
	Lockdown bool
	// Since is when the machine entered this state.
	Since time.Time
	// Seq increases by one with every published snapshot, so a subscriber
	// can tell whether it missed one.
	Seq uint64
}

// Blocked returns nil in Connected and, in every other state, a
// *BlockedError describing why traffic is refused.
func (s Snapshot) Blocked() error {
	if s.State == Connected {
		return nil
	}
	return &BlockedError{State: s.State, Cause: s.Cause}
}

// String describes the snapshot in one line, e.g.
// "connecting (attempt 3, handshake-timeout)".
func (s Snapshot) String() string {
	var extra string
	switch s.State {
	case Connecting:
		extra = fmt.Sprintf("attempt %d", s.Attempt)
	case Connected:
		extra = s.Endpoint
	case Disconnecting:
		extra = "then " + s.After.String()
	case Error:
		if s.BlockFailed {
			extra = "blocking failed"
		}
	}
	if s.Cause != CauseNone {
		if extra != "" {
			extra += ", "
		}
		extra += string(s.Cause)
	}
	if extra == "" {
		return s.State.String()
	}
	return s.State.String() + " (" + extra + ")"
}

// ErrBlocked is the error every refused flow wraps: the tunnel is not
// connected. Test for it with errors.Is.
var ErrBlocked = errors.New("state: blocked")

// BlockedError is returned for a flow refused because the tunnel is not
// Connected. It unwraps to ErrBlocked.
type BlockedError struct {
	State State
	Cause Cause
}

func (e *BlockedError) Error() string {
	if e.Cause == CauseNone {
		return fmt.Sprintf("blocked: tunnel is %s", e.State)
	}
	return fmt.Sprintf("blocked: tunnel is %s (%s)", e.State, e.Cause)
}

func (e *BlockedError) Unwrap() error { return ErrBlocked }

// Timings, from talpid, measured on real networks.
const (
	// MinAttemptInterval is the least time between the starts of two
	// connection attempts.
	MinAttemptInterval = 1 * time.Second
	// FirstAttemptDeadline is attempt 0's deadline; each later attempt's
	// deadline doubles, up to MaxAttemptDeadline.
	FirstAttemptDeadline = 4 * time.Second
	MaxAttemptDeadline   = 15 * time.Second
	// AttemptGrace is how long past an attempt's deadline the machine waits
	// for the backend to report the attempt's outcome before it times the
	// attempt out itself. Backends time out at the deadline, with a precise
	// cause; the machine's timer is the backstop.
	AttemptGrace = 500 * time.Millisecond

	// Liveness, once Connected: when data was sent but nothing received for
	// ProbeAfterSilence, or nothing at all happened for ProbeAfterIdle, probe
	// every ProbeInterval; nothing received for DownAfterSilence means Down.
	ProbeAfterSilence = 5 * time.Second
	ProbeAfterIdle    = 120 * time.Second
	ProbeInterval     = 3 * time.Second
	DownAfterSilence  = 15 * time.Second
	// SuspendGap: a liveness monitor that finds this much time passed between
	// two of its ticks assumes the machine was suspended and resets its clock.
	SuspendGap = 6 * time.Second
)

// AttemptDeadline is how long attempt n has to get verified:
// min(FirstAttemptDeadline * 2^n, MaxAttemptDeadline).
func AttemptDeadline(n int) time.Duration {
	d := FirstAttemptDeadline
	for i := 0; i < n && d < MaxAttemptDeadline; i++ {
		d *= 2
	}
	return min(d, MaxAttemptDeadline)
}
