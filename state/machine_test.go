package state

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warren-vpn/warren/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a Clock whose time moves only when Advance is called.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       *fakeClock
	when    time.Time
	f       func()
	stopped bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, when: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

// Advance moves time forward by d, firing due timers in order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].when.Before(c.timers[j].when) })
		var due *fakeTimer
		for i, t := range c.timers {
			if !t.stopped && !t.when.After(end) {
				due = t
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				break
			}
		}
		if due == nil {
			break
		}
		due.stopped = true
		c.now = due.when
		c.mu.Unlock()
		due.f()
		c.mu.Lock()
	}
	c.now = end
	c.mu.Unlock()
}

// fakeTunnel records Start and Stop and keeps their reporters for the test
// to report through. onStop, if set, runs inside Stop.
type fakeTunnel struct {
	mu      sync.Mutex
	starts  []Attempt
	startAt []time.Time
	started []Reporter
	stopped []Reporter
	clock   Clock
	onStop  func(Reporter)
}

func (f *fakeTunnel) Start(a Attempt, r Reporter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts = append(f.starts, a)
	f.startAt = append(f.startAt, f.clock.Now())
	f.started = append(f.started, r)
}

func (f *fakeTunnel) Stop(r Reporter) {
	f.mu.Lock()
	f.stopped = append(f.stopped, r)
	onStop := f.onStop
	f.mu.Unlock()
	if onStop != nil {
		onStop(r)
	}
}

func (f *fakeTunnel) numStarts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.starts)
}

func (f *fakeTunnel) lastStart() (Attempt, Reporter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts[len(f.starts)-1], f.started[len(f.started)-1]
}

// recordingPolicy records every snapshot it is asked to apply, with what the
// machine had published at that moment, and fails when fail says so.
type recordingPolicy struct {
	mu        sync.Mutex
	m         *Machine
	applied   []Snapshot
	published []Snapshot
	fail      func(Snapshot) error
}

func (p *recordingPolicy) Apply(s Snapshot) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied = append(p.applied, s)
	if p.m != nil {
		p.published = append(p.published, p.m.Current())
	}
	if p.fail != nil {
		return p.fail(s)
	}
	return nil
}

type harness struct {
	t      *testing.T
	m      *Machine
	clock  *fakeClock
	tunnel *fakeTunnel
	policy *recordingPolicy
	cfg    *config.Config
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	clock := &fakeClock{now: t0}
	h := &harness{
		t:      t,
		clock:  clock,
		tunnel: &fakeTunnel{clock: clock},
		policy: &recordingPolicy{},
		cfg:    &config.Config{Path: "wg0.conf"},
	}
	// By default the fake tunnel closes at once, from inside Stop, the way a
	// backend with nothing running does.
	h.tunnel.onStop = func(r Reporter) { r.Closed() }
	m, err := New(Options{Tunnel: h.tunnel, Policy: h.policy, Configs: []*config.Config{h.cfg}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	h.policy.mu.Lock()
	h.policy.m = m
	h.policy.mu.Unlock()
	t.Cleanup(func() {
		h.tunnel.mu.Lock()
		h.tunnel.onStop = func(r Reporter) { r.Closed() }
		h.tunnel.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return h
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

// settle returns once the machine has handled everything reported so far: a
// command is handled only after every event queued before it.
func (h *harness) settle() Snapshot {
	h.t.Helper()
	s, err := h.m.command(h.ctx(), input{})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) want(state State, attempt int) Snapshot {
	h.t.Helper()
	s := h.settle()
	if s.State != state || (state == Connecting && s.Attempt != attempt) {
		h.t.Fatalf("state = %v, want %v (attempt %d)", s, state, attempt)
	}
	return s
}

func (h *harness) connect() {
	h.t.Helper()
	if _, err := h.m.Connect(h.ctx()); err != nil {
		h.t.Fatal(err)
	}
	_, r := h.tunnel.lastStart()
	r.Up("192.0.2.1:51820")
	h.want(Connected, 0)
}

func TestMachineConnectAndDisconnect(t *testing.T) {
	h := newHarness(t)
	if s := h.m.Current(); s.State != Disconnected || s.Seq != 1 {
		t.Fatalf("initial snapshot %+v", s)
	}
	s, err := h.m.Connect(h.ctx())
	if err != nil || s.State != Connecting || s.Attempt != 0 {
		t.Fatalf("Connect = %v, %v", s, err)
	}
	a, r := h.tunnel.lastStart()
	if a.N != 0 || a.Config != h.cfg || !a.Deadline.Equal(t0.Add(4*time.Second)) {
		t.Fatalf("attempt = %+v", a)
	}
	r.Up("192.0.2.1:51820")
	s = h.want(Connected, 0)
	if s.Endpoint != "192.0.2.1:51820" {
		t.Errorf("endpoint %q", s.Endpoint)
	}
	s, err = h.m.Disconnect(h.ctx())
	if err != nil {
		t.Fatal(err)
	}
	// The fake tunnel reported Closed from inside Stop, so the machine is
	// already Disconnected (or about to be).
	s = h.want(Disconnected, 0)
	if s.Seq != 5 {
		t.Errorf("Seq = %d after 4 transitions, want 5", s.Seq)
	}
}

// The policy of a state is applied before the state is published.
func TestMachineAppliesPolicyBeforePublishing(t *testing.T) {
	h := newHarness(t)
	h.connect()
	h.m.Disconnect(h.ctx())
	h.want(Disconnected, 0)
	h.policy.mu.Lock()
	defer h.policy.mu.Unlock()
	// applied[0] is New's initial Disconnected, before the policy knew m.
	applied, published := h.policy.applied[1:], h.policy.published
	wantStates := []State{Connecting, Connected, Disconnecting, Disconnected}
	if len(applied) != len(wantStates) {
		t.Fatalf("applied %d policies, want %d: %v", len(applied), len(wantStates), applied)
	}
	for i, s := range applied {
		if s.State != wantStates[i] {
			t.Errorf("policy %d applied for %v, want %v", i, s.State, wantStates[i])
		}
		if published[i].Seq != s.Seq-1 {
			t.Errorf("when the policy for %v (seq %d) was applied, seq %d was published; want the previous one", s.State, s.Seq, published[i].Seq)
		}
	}
}

func TestMachineRetriesWithGrowingDeadlines(t *testing.T) {
	h := newHarness(t)
	h.m.Connect(h.ctx())
	wantDeadlines := []time.Duration{4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second}
	for n, d := range wantDeadlines {
		a, _ := h.tunnel.lastStart()
		if a.N != n {
			t.Fatalf("attempt %d started as %d", n, a.N)
		}
		if got := a.Deadline.Sub(h.clock.Now()); got != d {
			t.Fatalf("attempt %d deadline in %v, want %v", n, got, d)
		}
		// The backend says nothing: the machine's own timer ends the attempt
		// AttemptGrace after the deadline.
		h.clock.Advance(d + AttemptGrace - time.Millisecond)
		h.want(Connecting, n)
		h.clock.Advance(time.Millisecond)
		s := h.want(Connecting, n+1)
		if s.Cause != CauseHandshakeTimeout {
			t.Fatalf("cause %q", s.Cause)
		}
	}
	if got := h.tunnel.numStarts(); got != len(wantDeadlines)+1 {
		t.Fatalf("%d starts", got)
	}
}

func TestMachineSpacesAttempts(t *testing.T) {
	h := newHarness(t)
	h.m.Connect(h.ctx())
	// The attempt fails at once: Connecting(1) is published at once, but the
	// next attempt waits until MinAttemptInterval after the first started.
	h.clock.Advance(300 * time.Millisecond)
	_, r := h.tunnel.lastStart()
	r.Failed(CauseEndpointResolution, true, errors.New("no such host"))
	s := h.want(Connecting, 1)
	if s.Cause != CauseEndpointResolution || s.Detail != "no such host" {
		t.Fatalf("snapshot %+v", s)
	}
	if n := h.tunnel.numStarts(); n != 1 {
		t.Fatalf("attempt 1 started before the interval: %d starts", n)
	}
	h.clock.Advance(699 * time.Millisecond)
	h.settle()
	if n := h.tunnel.numStarts(); n != 1 {
		t.Fatalf("attempt 1 started %v after attempt 0", 999*time.Millisecond)
	}
	h.clock.Advance(time.Millisecond)
	h.settle()
	if n := h.tunnel.numStarts(); n != 2 {
		t.Fatalf("attempt 1 not started after the interval: %d starts", n)
	}
	h.tunnel.mu.Lock()
	gap := h.tunnel.startAt[1].Sub(h.tunnel.startAt[0])
	h.tunnel.mu.Unlock()
	if gap != MinAttemptInterval {
		t.Fatalf("attempts %v apart", gap)
	}
	// The deadline counts from the attempt's real start.
	a, _ := h.tunnel.lastStart()
	if got := a.Deadline.Sub(h.clock.Now()); got != AttemptDeadline(1) {
		t.Fatalf("deadline in %v", got)
	}
}

func TestMachineDropsStaleReports(t *testing.T) {
	h := newHarness(t)
	h.m.Connect(h.ctx())
	_, old := h.tunnel.lastStart()
	old.Failed(CauseHandshakeTimeout, true, nil)
	h.clock.Advance(time.Second)
	h.want(Connecting, 1)
	// Attempt 0 is gone; its Up must not make the machine Connected.
	old.Up("192.0.2.9:1")
	old.Failed(CauseTunnelDevice, false, nil)
	h.want(Connecting, 1)
	_, cur := h.tunnel.lastStart()
	cur.Up("192.0.2.1:51820")
	h.want(Connected, 0)
	// Nor may a stale Down take it down.
	old.Down("stale")
	h.want(Connected, 0)
}

func TestMachineUnrecoverableFailure(t *testing.T) {
	h := newHarness(t)
	h.m.Connect(h.ctx())
	_, r := h.tunnel.lastStart()
	r.Failed(CauseTunnelDevice, false, errors.New("create TUN: no permission"))
	s := h.want(Error, 0)
	if s.Cause != CauseTunnelDevice || s.Detail != "create TUN: no permission" {
		t.Fatalf("snapshot %+v", s)
	}
	// Error stays until a command, whatever the clock does.
	h.clock.Advance(time.Hour)
	h.want(Error, 0)
	h.m.Connect(h.ctx())
	h.want(Connecting, 0)
}

func TestMachineDownReconnects(t *testing.T) {
	h := newHarness(t)
	h.connect()
	var closeIt Reporter
	h.tunnel.mu.Lock()
	h.tunnel.onStop = func(r Reporter) { closeIt = r } // closes later
	h.tunnel.mu.Unlock()
	_, r := h.tunnel.lastStart()
	r.Down("nothing received for 15s")
	s := h.want(Disconnecting, 0)
	if s.After != AfterReconnect || s.Cause != CauseLivenessLost {
		t.Fatalf("snapshot %+v", s)
	}
	starts := h.tunnel.numStarts()
	closeIt.Closed()
	h.clock.Advance(time.Second)
	s = h.want(Connecting, 0)
	if s.Cause != CauseLivenessLost {
		t.Errorf("Connecting does not say why it reconnects: %+v", s)
	}
	if h.tunnel.numStarts() != starts+1 {
		t.Fatalf("no new attempt after Closed")
	}
}

func TestMachineFailureWhileConnectedBlocks(t *testing.T) {
	h := newHarness(t)
	h.connect()
	var closeIt Reporter
	h.tunnel.mu.Lock()
	h.tunnel.onStop = func(r Reporter) { closeIt = r }
	h.tunnel.mu.Unlock()
	_, r := h.tunnel.lastStart()
	r.Failed(CauseRouting, false, errors.New("route vanished"))
	s := h.want(Disconnecting, 0)
	if s.After != AfterBlock {
		t.Fatalf("snapshot %+v", s)
	}
	closeIt.Closed()
	s = h.want(Error, 0)
	if s.Cause != CauseRouting {
		t.Fatalf("snapshot %+v", s)
	}
}

func TestMachinePolicyFailure(t *testing.T) {
	tests := []struct {
		name            string
		failBlocking    bool
		wantBlockFailed bool
	}{
		{"blocking still holds", false, false},
		{"blocking failed too", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.policy.mu.Lock()
			h.policy.fail = func(s Snapshot) error {
				if s.State == Connected || (tt.failBlocking && s.State == Error) {
					return errors.New("netlink: operation not permitted")
				}
				return nil
			}
			h.policy.mu.Unlock()
			h.m.Connect(h.ctx())
			stops := len(h.tunnel.stopped)
			_, r := h.tunnel.lastStart()
			r.Up("192.0.2.1:51820")
			s := h.want(Error, 0)
			if s.Cause != CauseFirewall || s.BlockFailed != tt.wantBlockFailed {
				t.Fatalf("snapshot %+v", s)
			}
			if s.Detail != "netlink: operation not permitted" {
				t.Errorf("detail %q", s.Detail)
			}
			h.tunnel.mu.Lock()
			defer h.tunnel.mu.Unlock()
			if len(h.tunnel.stopped) != stops+1 {
				t.Errorf("the tunnel was not stopped")
			}
		})
	}
}

func TestMachineReloadUsesNewConfig(t *testing.T) {
	h := newHarness(t)
	h.connect()
	newCfg := &config.Config{Path: "new.conf"}
	s, err := h.m.Reload(h.ctx(), []*config.Config{newCfg})
	if err != nil {
		t.Fatal(err)
	}
	if s.State != Disconnecting && s.State != Connecting {
		t.Fatalf("Reload led to %v", s)
	}
	h.clock.Advance(time.Second)
	h.want(Connecting, 0)
	a, _ := h.tunnel.lastStart()
	if a.Config != newCfg {
		t.Fatalf("attempt after reload used %q", a.Config.Path)
	}
	// Reload in Disconnected changes nothing but the config.
	h.m.Disconnect(h.ctx())
	h.want(Disconnected, 0)
	third := &config.Config{Path: "third.conf"}
	if s, _ := h.m.Reload(h.ctx(), []*config.Config{third}); s.State != Disconnected {
		t.Fatalf("Reload in Disconnected led to %v", s)
	}
	h.clock.Advance(time.Second)
	h.m.Connect(h.ctx())
	if a, _ := h.tunnel.lastStart(); a.Config != third {
		t.Fatalf("attempt used %q", a.Config.Path)
	}
}

func TestMachineLockdownReappliesPolicy(t *testing.T) {
	h := newHarness(t)
	s, err := h.m.SetLockdown(h.ctx(), true)
	if err != nil || !s.Lockdown || s.State != Disconnected {
		t.Fatalf("SetLockdown = %+v, %v", s, err)
	}
	h.policy.mu.Lock()
	last := h.policy.applied[len(h.policy.applied)-1]
	h.policy.mu.Unlock()
	if !last.Lockdown {
		t.Fatal("the policy was not told about lockdown")
	}
}

func TestMachineSubscribe(t *testing.T) {
	h := newHarness(t)
	ch, cancel := h.m.Subscribe()
	defer cancel()
	h.connect()
	var got []State
	for len(got) < 2 {
		select {
		case s := <-ch:
			got = append(got, s.State)
		case <-time.After(5 * time.Second):
			t.Fatalf("got only %v", got)
		}
	}
	if got[0] != Connecting || got[1] != Connected {
		t.Fatalf("subscriber saw %v", got)
	}
}

func TestMachineShutdown(t *testing.T) {
	h := newHarness(t)
	h.connect()
	ch, _ := h.m.Subscribe()
	if err := h.m.Shutdown(h.ctx()); err != nil {
		t.Fatal(err)
	}
	if s := h.m.Current(); s.State != Disconnected {
		t.Fatalf("after Shutdown: %v", s)
	}
	if _, err := h.m.Connect(h.ctx()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Connect after Shutdown: %v", err)
	}
	for range ch { // closed by Shutdown
	}
	// Reports after shutdown are dropped without blocking.
	_, r := h.tunnel.lastStart()
	r.Up("x")
	if err := h.m.Shutdown(h.ctx()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

func TestMachineShutdownGivesUpOnStuckTunnel(t *testing.T) {
	h := newHarness(t)
	h.connect()
	h.tunnel.mu.Lock()
	h.tunnel.onStop = func(Reporter) {} // never reports Closed
	h.tunnel.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := h.m.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v", err)
	}
}

// With several configs, each failed attempt moves to the next, and the
// snapshot names the one in use.
func TestMachineFailover(t *testing.T) {
	clock := &fakeClock{now: t0}
	tunnel := &fakeTunnel{clock: clock, onStop: func(r Reporter) { r.Closed() }}
	a, b, c := &config.Config{Path: "a.conf"}, &config.Config{Path: "b.conf"}, &config.Config{Path: "c.conf"}
	m, err := New(Options{Tunnel: tunnel, Policy: &recordingPolicy{}, Configs: []*config.Config{a, b, c}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	h := &harness{t: t, m: m, clock: clock, tunnel: tunnel}
	s, _ := m.Connect(h.ctx())
	if s.Config != "a.conf" {
		t.Fatalf("Connecting(0) uses %q", s.Config)
	}
	want := []struct {
		cfg *config.Config
		try int
	}{{a, 0}, {b, 0}, {c, 0}, {a, 1}, {b, 1}}
	for n, w := range want {
		at, r := tunnel.lastStart()
		if at.N != n || at.Config != w.cfg || at.Try != w.try {
			t.Fatalf("attempt %d: N=%d config=%s try=%d, want config=%s try=%d", n, at.N, at.Config.Path, at.Try, w.cfg.Path, w.try)
		}
		if n == len(want)-1 {
			r.Up("192.0.2.2:51820")
			break
		}
		r.Failed(CauseHandshakeTimeout, true, nil)
		clock.Advance(time.Second)
		if s := h.want(Connecting, n+1); s.Config != want[n+1].cfg.Path {
			t.Fatalf("Connecting(%d) shows %q, want %q", n+1, s.Config, want[n+1].cfg.Path)
		}
	}
	s = h.want(Connected, 0)
	if s.Config != "b.conf" || s.Endpoint != "192.0.2.2:51820" {
		t.Fatalf("Connected shows config %q endpoint %q", s.Config, s.Endpoint)
	}
	// A reconnect starts again from the first, preferred config.
	m.Reconnect(h.ctx())
	clock.Advance(time.Second)
	if s := h.want(Connecting, 0); s.Config != "a.conf" {
		t.Fatalf("after Reconnect: %q", s.Config)
	}
}

// Ping answers from the loop and changes nothing, and fails once the
// machine has shut down.
func TestMachinePing(t *testing.T) {
	h := newHarness(t)
	h.connect()
	before := h.m.Current()
	s, err := h.m.Ping(h.ctx())
	if err != nil || s != before {
		t.Fatalf("Ping = %v, %v; want %v", s, err, before)
	}
	if now := h.settle(); now != before {
		t.Errorf("after Ping: %v, want %v unchanged", now, before)
	}
	if err := h.m.Shutdown(h.ctx()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Ping(h.ctx()); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after Shutdown: %v, want ErrClosed", err)
	}
}

// Current may be read while the loop changes state (run with -race).
func TestMachineCurrentWhileChanging(t *testing.T) {
	h := newHarness(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				_ = h.m.Current().State
			}
		}
	}()
	h.connect()
	h.m.Disconnect(h.ctx())
	h.want(Disconnected, 0)
	close(stop)
	<-done
}
