package netstack

import (
	"time"

	"github.com/warren-vpn/warren/state"
)

// livenessTick is how often a connected tunnel's counters are sampled.
const livenessTick = 1 * time.Second

// liveness decides, from a connected device's received and sent byte
// counters sampled once a tick, when to probe the tunnel and when to call it
// down. It follows DESIGN.md (from talpid):
//
//   - data sent but nothing received for state.ProbeAfterSilence, or nothing
//     at all for state.ProbeAfterIdle: start probing, every
//     state.ProbeInterval;
//   - while probing, nothing received for state.DownAfterSilence: down
//     (counted from the last byte received, or from the start of probing
//     when it started because the tunnel was idle);
//   - anything received ends probing;
//   - two ticks state.SuspendGap or more apart mean the machine was
//     suspended: the clock starts afresh.
//
// Times must be wall-clock readings (time.Now().Round(0)): Go's monotonic
// clock stops while the machine sleeps, and would hide a suspend.
type liveness struct {
	lastTick       time.Time
	rx, tx         uint64    // the counters at the last tick
	lastRx, lastTx time.Time // when each last rose
	probing        bool
	lastProbe      time.Time
}

func newLiveness(now time.Time, rx, tx uint64) *liveness {
	return &liveness{lastTick: now, rx: rx, tx: tx, lastRx: now, lastTx: now}
}

// tick takes one sample and says whether to send a probe now, and whether
// the tunnel is down.
func (l *liveness) tick(now time.Time, rx, tx uint64) (probe, down bool) {
	if now.Sub(l.lastTick) >= state.SuspendGap || now.Before(l.lastTick) {
		l.lastRx, l.lastTx, l.probing = now, now, false
	}
	l.lastTick = now
	if rx != l.rx {
		l.rx, l.lastRx, l.probing = rx, now, false
	}
	if tx != l.tx {
		l.tx, l.lastTx = tx, now
	}
	if !l.probing {
		switch {
		case l.lastTx.After(l.lastRx) && now.Sub(l.lastRx) >= state.ProbeAfterSilence:
			l.probing = true
		case now.Sub(l.lastRx) >= state.ProbeAfterIdle && now.Sub(l.lastTx) >= state.ProbeAfterIdle:
			l.probing = true
			l.lastRx = now // count the silence from now
		default:
			return false, false
		}
		l.lastProbe = time.Time{}
	}
	if now.Sub(l.lastRx) >= state.DownAfterSilence {
		return false, true
	}
	if now.Sub(l.lastProbe) >= state.ProbeInterval {
		l.lastProbe = now
		return true, false
	}
	return false, false
}
