package netstack

import (
	"testing"
	"time"
)

// step is one tick: how far the clock moved since the last one, whether
// bytes arrived or left, and what the monitor must say.
type step struct {
	after      time.Duration
	rx, tx     bool
	probe, off bool // off: down
}

func runSteps(t *testing.T, steps []step) {
	t.Helper()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var rx, tx uint64
	l := newLiveness(now, rx, tx)
	var elapsed time.Duration
	for i, s := range steps {
		now = now.Add(s.after)
		elapsed += s.after
		if s.rx {
			rx += 100
		}
		if s.tx {
			tx += 100
		}
		probe, down := l.tick(now, rx, tx)
		if probe != s.probe || down != s.off {
			t.Fatalf("step %d (t=%v): probe=%v down=%v, want probe=%v down=%v", i, elapsed, probe, down, s.probe, s.off)
		}
	}
}

// repeat returns n one-second ticks with nothing happening, each expecting
// what f says for tick i (1-based).
func repeat(n int, f func(i int) (probe, down bool)) []step {
	var steps []step
	for i := 1; i <= n; i++ {
		p, d := f(i)
		steps = append(steps, step{after: time.Second, probe: p, off: d})
	}
	return steps
}

func quiet(int) (bool, bool) { return false, false }

func TestLivenessBusyTunnelIsFine(t *testing.T) {
	var steps []step
	for range 300 {
		steps = append(steps, step{after: time.Second, rx: true, tx: true})
	}
	runSteps(t, steps)
}

// Data sent and nothing back: probe from 5s after the last receive, every
// 3s, down at 15s.
func TestLivenessSentWithoutReceive(t *testing.T) {
	steps := []step{{after: time.Second, rx: true, tx: true}, {after: time.Second, tx: true}}
	// Last receive at t=1s. Silence from then: probing at t=6, 9, 12, 15; down at 16.
	steps = append(steps, repeat(14, func(i int) (bool, bool) {
		switch at := i + 2; {
		case at == 16:
			return false, true
		case at >= 6 && (at-6)%3 == 0:
			return true, false
		}
		return false, false
	})...)
	runSteps(t, steps)
}

// A reply to a probe ends probing; probing starts again only once something
// is sent after the last receive and that receive is 5s old.
func TestLivenessProbeAnswered(t *testing.T) {
	runSteps(t, []step{
		{after: time.Second, tx: true},    // t=1: sent; last receive at t=0
		{after: time.Second},              // t=2
		{after: time.Second},              // t=3
		{after: time.Second},              // t=4
		{after: time.Second, probe: true}, // t=5: 5s without a receive
		{after: time.Second, rx: true},    // t=6: answered
		{after: time.Second},              // t=7
		{after: time.Second, tx: true},    // t=8: sent again
		{after: time.Second},              // t=9
		{after: time.Second},              // t=10
		{after: time.Second, probe: true}, // t=11: 5s after the receive at t=6
		{after: time.Second, rx: true},    // t=12: answered
		{after: time.Second},              // t=13
		{after: time.Second},              // t=14: no probe, nothing unanswered
	})
}

// An idle tunnel is probed after 120s; if nothing answers, it is down 15s
// after probing began.
func TestLivenessIdle(t *testing.T) {
	steps := repeat(135, func(i int) (bool, bool) {
		switch {
		case i == 135:
			return false, true
		case i >= 120 && (i-120)%3 == 0:
			return true, false
		}
		return false, false
	})
	runSteps(t, steps)
	// Answered, it stays up.
	steps = repeat(120, func(i int) (bool, bool) { return i == 120, false })
	steps = append(steps, step{after: time.Second, rx: true})
	steps = append(steps, repeat(100, quiet)...)
	runSteps(t, steps)
}

// A gap of 6s or more between ticks is a suspend: it does not count as
// silence.
func TestLivenessSuspend(t *testing.T) {
	steps := []step{
		{after: time.Second, rx: true, tx: true},
		{after: time.Second, tx: true},
		{after: 10 * time.Minute}, // suspended, with data sent before
	}
	steps = append(steps, repeat(4, quiet)...) // not probing: the clock started afresh
	runSteps(t, steps)
	// A wall clock that goes back is treated the same way.
	runSteps(t, []step{{after: time.Second, tx: true}, {after: -time.Hour}, {after: time.Second}, {after: time.Second}})
}
