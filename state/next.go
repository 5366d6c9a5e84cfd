package state

import (
	"time"

	"github.com/warren-vpn/warren/config"
)

// The transition table (DESIGN.md), with Connecting(n) written C(n) and
// Disconnecting(after) written D(after):
//
//	                     Connect
//	  Disconnected ─────────────────────▶ C(0)
//	  C(n) ── Up ─────────────────────────▶ Connected
//	  C(n) ── Failed(recoverable) | timeout ▶ C(n+1)   (starts ≥ MinAttemptInterval apart)
//	  C(n) ── Failed(unrecoverable) ───────▶ Error(cause)
//	  C(n) ── Disconnect ──────────────────▶ D(Nothing)
//	  C(n) ── Connect | Reconnect | Reload ▶ D(Reconnect(0))
//	  Connected ── Down ───────────────────▶ D(Reconnect(0))
//	  Connected ── Failed(unrecoverable) ──▶ D(Block(cause))
//	  Connected ── Disconnect ─────────────▶ D(Nothing)
//	  Connected ── Reconnect | Reload ─────▶ D(Reconnect(0))
//	  D(after) ── Closed ──────────────────▶ Nothing: Disconnected
//	                                         Reconnect(n): C(n)
//	                                         Block(c): Error(c)
//	  D(after) ── Connect | Reconnect | Reload ▶ D(Reconnect(0))
//	  D(after) ── Disconnect ──────────────▶ D(Nothing)
//	  D(after) ── Failed(unrecoverable) ───▶ D(Block(cause)), unless after is Nothing
//	  Error(c) ── Connect | Reconnect ─────▶ C(0)
//	  Error(c) ── Disconnect ──────────────▶ D(Nothing)
//
// Anything else leaves the state as it is. Two inputs change the snapshot
// without changing the state: Reload always replaces the configurations used
// by later attempts, and SetLockdown always sets Snapshot.Lockdown.
//
// The table's "unless after is Nothing" applies to Failed only: a failure
// while tearing down at the user's request still ends in Disconnected, as
// asked, while Connect, Reconnect and Reload in any Disconnecting lead to a
// reconnect (as the table says, even when after was Nothing).

// inputKind is what arrives at the machine: a command or a backend event.
type inputKind uint8

const (
	inConnect inputKind = iota + 1
	inDisconnect
	inReconnect
	inReload
	inSetLockdown
	inUp
	inDown
	inFailed
	inClosed
	inAttemptTimeout
)

var inputNames = [...]string{
	inConnect:        "Connect",
	inDisconnect:     "Disconnect",
	inReconnect:      "Reconnect",
	inReload:         "Reload",
	inSetLockdown:    "SetLockdown",
	inUp:             "Up",
	inDown:           "Down",
	inFailed:         "Failed",
	inClosed:         "Closed",
	inAttemptTimeout: "AttemptTimeout",
}

func (k inputKind) String() string { return inputNames[k] }

// input is one input to next, with what it carries.
type input struct {
	kind inputKind
	// cause, recoverable and detail come with Failed and Down.
	cause       Cause
	recoverable bool
	detail      string
	// endpoint comes with Up.
	endpoint string
	// configs come with Reload.
	configs []*config.Config
	// lockdown comes with SetLockdown.
	lockdown bool
}

// effects is what the owner of the machine must do after publishing the new
// snapshot.
type effects struct {
	// start starts attempt Snapshot.Attempt (no sooner than
	// MinAttemptInterval after the previous attempt started).
	start bool
	// stop stops the tunnel; it reports Closed when done.
	stop bool
	// configs, if not nil, replace the configurations for later attempts.
	configs []*config.Config
}

// next is the transition table. It is pure: it returns the new snapshot and
// what the owner must do, and does nothing itself. now stamps Since on a
// transition; the owner stamps Seq.
func next(s Snapshot, in input, now time.Time) (Snapshot, effects) {
	var eff effects
	switch in.kind {
	case inReload:
		eff.configs = in.configs
	case inSetLockdown:
		s.Lockdown = in.lockdown
		return s, eff
	}
	to, ok := transition(s, in, &eff)
	if !ok {
		return s, eff
	}
	if to.State != s.State || to.Attempt != s.Attempt {
		to.Since = now
	}
	return to, eff
}

// transition returns the snapshot a row of the table leads to, or false when
// no row matches.
func transition(s Snapshot, in input, eff *effects) (Snapshot, bool) {
	switch s.State {
	case Disconnected:
		if in.kind == inConnect {
			eff.start = true
			return connecting(s, 0, CauseNone, ""), true
		}

	case Connecting:
		switch in.kind {
		case inUp:
			return Snapshot{State: Connected, Endpoint: in.endpoint, Lockdown: s.Lockdown, Since: s.Since}, true
		case inFailed:
			if in.recoverable {
				eff.start = true
				return connecting(s, s.Attempt+1, in.cause, in.detail), true
			}
			eff.stop = true
			return Snapshot{State: Error, Cause: in.cause, Detail: in.detail, Lockdown: s.Lockdown, Since: s.Since}, true
		case inAttemptTimeout:
			eff.start = true
			return connecting(s, s.Attempt+1, CauseHandshakeTimeout, "the attempt's deadline passed"), true
		case inDisconnect:
			eff.stop = true
			return disconnecting(s, AfterNothing, CauseNone, ""), true
		case inConnect, inReconnect, inReload:
			eff.stop = true
			return disconnecting(s, AfterReconnect, CauseNone, ""), true
		}

	case Connected:
		switch in.kind {
		case inDown:
			eff.stop = true
			return disconnecting(s, AfterReconnect, CauseLivenessLost, in.detail), true
		case inFailed:
			if !in.recoverable {
				eff.stop = true
				return disconnecting(s, AfterBlock, in.cause, in.detail), true
			}
		case inDisconnect:
			eff.stop = true
			return disconnecting(s, AfterNothing, CauseNone, ""), true
		case inReconnect, inReload:
			eff.stop = true
			return disconnecting(s, AfterReconnect, CauseNone, ""), true
		}

	case Disconnecting:
		switch in.kind {
		case inClosed:
			switch s.After {
			case AfterReconnect:
				eff.start = true
				return connecting(s, s.Attempt, s.Cause, s.Detail), true
			case AfterBlock:
				return Snapshot{State: Error, Cause: s.Cause, Detail: s.Detail, Lockdown: s.Lockdown, Since: s.Since}, true
			default:
				return Snapshot{State: Disconnected, Lockdown: s.Lockdown, Since: s.Since}, true
			}
		case inConnect, inReconnect, inReload:
			return disconnecting(s, AfterReconnect, CauseNone, ""), true
		case inDisconnect:
			return disconnecting(s, AfterNothing, CauseNone, ""), true
		case inFailed:
			if !in.recoverable && s.After != AfterNothing {
				return disconnecting(s, AfterBlock, in.cause, in.detail), true
			}
		}

	case Error:
		switch in.kind {
		case inConnect, inReconnect:
			eff.start = true
			return connecting(s, 0, CauseNone, ""), true
		case inDisconnect:
			eff.stop = true
			return disconnecting(s, AfterNothing, CauseNone, ""), true
		}
	}
	return s, false
}

func connecting(s Snapshot, attempt int, c Cause, detail string) Snapshot {
	return Snapshot{State: Connecting, Attempt: attempt, Cause: c, Detail: detail, Lockdown: s.Lockdown, Since: s.Since}
}

// disconnecting returns Disconnecting(after). AfterReconnect always resumes
// at attempt 0.
func disconnecting(s Snapshot, after After, c Cause, detail string) Snapshot {
	return Snapshot{State: Disconnecting, After: after, Cause: c, Detail: detail, Lockdown: s.Lockdown, Since: s.Since}
}
