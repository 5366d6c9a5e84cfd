package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warren-vpn/warren/config"
)

// Tunnel is the backend the machine drives: the netstack device in proxy
// mode, the kernel TUN in host mode.
//
// The machine calls Start and Stop from its own goroutine, one call at a time,
// and never waits for them to finish: both must return at once and do their
// work in the background. Each call gets its own Reporter; a backend reports
// through the Reporter of the call it is working for, and the machine drops
// whatever arrives on an older one.
type Tunnel interface {
	// Start begins connection attempt a. It first tears down whatever an
	// earlier Start left behind. It reports exactly one of Up or Failed for
	// the attempt, at the latest at a.Deadline (a verification or handshake
	// timeout is a recoverable Failed), and afterwards, while up, Down when
	// liveness is lost or Failed when something unrecoverable happens.
	Start(a Attempt, r Reporter)
	// Stop tears down whatever Start made and reports Closed once nothing is
	// left; it may report Failed first if tearing down went wrong. Stop with
	// nothing running reports Closed at once.
	Stop(r Reporter)
}

// Attempt is one connection attempt.
type Attempt struct {
	// N counts attempts since the last Connect (or reconnect), from 0.
	N int
	// Config is the configuration to connect with: with k configurations,
	// attempt N uses configuration N mod k, so each failed attempt moves to
	// the next.
	Config *config.Config
	// Try counts the attempts made with this Config before, in this run of
	// attempts (N div k). A backend uses it to move through the addresses of
	// an endpoint's host name.
	Try int
	// Deadline is when the attempt must have been verified.
	Deadline time.Time
}

// Reporter is how a Tunnel reports what happened. Its methods never block for
// long and are safe to call from any goroutine, also after the machine has
// stopped (they do nothing then).
type Reporter interface {
	// Up: the tunnel is verified (a completed handshake, and bytes received
	// after a probe through it). endpoint is the peer endpoint in use.
	Up(endpoint string)
	// Down: a connected tunnel lost liveness.
	Down(detail string)
	// Failed: something went wrong. recoverable failures are retried.
	Failed(c Cause, recoverable bool, err error)
	// Closed: Stop finished; nothing of the tunnel is left.
	Closed()
}

// Policy is what a state allows: the proxy gate, the host firewall. Apply is
// called on every published snapshot, from the machine's goroutine, before
// the snapshot is published. It must allow traffic through the tunnel only
// when s.State is Connected. An error means the policy could not be put in
// place; the machine then goes to Error(firewall).
type Policy interface {
	Apply(s Snapshot) error
}

// Clock is the machine's source of time; tests use a fake one.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a timer made by a Clock.
type Timer interface {
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Options configures a Machine. Tunnel, Policy and Configs are required.
type Options struct {
	Tunnel Tunnel
	Policy Policy
	// Configs are the configurations to connect with, in order of
	// preference: attempt n uses Configs[n mod len(Configs)]. A Reload
	// replaces them.
	Configs []*config.Config
	// Lockdown asks the policy to block in Disconnected too.
	Lockdown bool
	// Clock defaults to the real clock.
	Clock Clock
	// Logger gets one line per transition. nil discards.
	Logger *slog.Logger
}

// ErrClosed is returned by the commands of a machine that has shut down.
var ErrClosed = errors.New("state: machine closed")

// Machine is the tunnel state machine. One goroutine, started by New and
// ended by Shutdown, owns the state: it reads inputs (commands and backend
// events) from a channel, runs them through the transition table, applies
// the new state's policy, publishes the snapshot, and carries out the
// effects. One goroutine rather than a mutex because the backend reports from
// its own goroutines at any time, and a channel serialises those reports with
// the commands without any lock being held while a policy is applied.
type Machine struct {
	tunnel Tunnel
	policy Policy
	clock  Clock
	log    *slog.Logger

	inputs chan request  // commands, each with a reply
	done   chan struct{} // closed when the loop has returned
	quit   chan struct{} // closed by Shutdown to end the loop
	stop   sync.Once

	// evMu guards events: backend reports and timer ticks, in the order they
	// happened, waiting for the loop. They are queued rather than sent on a
	// channel so that a report never blocks, not even one a backend makes
	// from inside Start or Stop, which the loop itself is calling.
	evMu   sync.Mutex
	events []request
	wake   chan struct{} // capacity 1: the loop has events to read

	current atomic.Pointer[Snapshot]

	// mu guards the fields below it: the waiters and subscribers that
	// publish wakes.
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every publish
	subs    map[*subscriber]struct{}

	// Owned by the loop goroutine.
	snap      Snapshot
	configs   []*config.Config
	gen       uint64    // generation of the latest Start or Stop
	lastStart time.Time // when the latest attempt started
	timer     Timer     // the pending attempt start, or the attempt's deadline
}

// request is an input on its way to the loop. A command's reply receives the
// snapshot after the command was handled. gen is the generation a backend
// event or timer belongs to; commands have gen 0.
type request struct {
	in    input
	gen   uint64
	tick  tickKind
	ping  bool // answer with the snapshot; change nothing
	reply chan Snapshot
}

// tickKind marks the machine's own timers, which are not inputs of the table
// except through inAttemptTimeout.
type tickKind uint8

const (
	tickNone tickKind = iota
	tickStart
)

// New returns a running machine in Disconnected, with its policy applied.
func New(opts Options) (*Machine, error) {
	if opts.Tunnel == nil || opts.Policy == nil || len(opts.Configs) == 0 || slices.Contains(opts.Configs, nil) {
		return nil, errors.New("state: Options needs a Tunnel, a Policy and Configs")
	}
	m := &Machine{
		tunnel:  opts.Tunnel,
		policy:  opts.Policy,
		clock:   opts.Clock,
		log:     opts.Logger,
		inputs:  make(chan request),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		quit:    make(chan struct{}),
		changed: make(chan struct{}),
		subs:    make(map[*subscriber]struct{}),
		configs: opts.Configs,
	}
	if m.clock == nil {
		m.clock = realClock{}
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.snap = Snapshot{State: Disconnected, Lockdown: opts.Lockdown, Since: m.clock.Now(), Seq: 1}
	if err := m.policy.Apply(m.snap); err != nil {
		return nil, fmt.Errorf("state: apply the initial policy: %w", err)
	}
	first := m.snap // a copy: the loop changes m.snap in place
	m.current.Store(&first)
	go m.loop()
	return m, nil
}

// Current returns the latest published snapshot.
func (m *Machine) Current() Snapshot { return *m.current.Load() }

// Connect asks for the tunnel to be up. It returns the snapshot the command
// led to.
func (m *Machine) Connect(ctx context.Context) (Snapshot, error) {
	return m.command(ctx, input{kind: inConnect})
}

// Disconnect asks for the tunnel to be down.
func (m *Machine) Disconnect(ctx context.Context) (Snapshot, error) {
	return m.command(ctx, input{kind: inDisconnect})
}

// Reconnect asks for the tunnel to be torn down and connected again.
func (m *Machine) Reconnect(ctx context.Context) (Snapshot, error) {
	return m.command(ctx, input{kind: inReconnect})
}

// Reload replaces the configurations. A connecting or connected tunnel
// reconnects with them; otherwise they are used by the next Connect.
func (m *Machine) Reload(ctx context.Context, configs []*config.Config) (Snapshot, error) {
	if len(configs) == 0 || slices.Contains(configs, nil) {
		return Snapshot{}, errors.New("state: Reload without configs")
	}
	return m.command(ctx, input{kind: inReload, configs: slices.Clone(configs)})
}

// SetLockdown sets whether the policy blocks in Disconnected too.
func (m *Machine) SetLockdown(ctx context.Context, on bool) (Snapshot, error) {
	return m.command(ctx, input{kind: inSetLockdown, lockdown: on})
}

// Ping returns the snapshot as the machine's loop sees it, changing
// nothing: an answer proves the loop is alive and not stuck (the API's
// /healthz).
func (m *Machine) Ping(ctx context.Context) (Snapshot, error) {
	return m.send(ctx, request{ping: true})
}

func (m *Machine) command(ctx context.Context, in input) (Snapshot, error) {
	return m.send(ctx, request{in: in})
}

func (m *Machine) send(ctx context.Context, r request) (Snapshot, error) {
	reply := make(chan Snapshot, 1)
	r.reply = reply
	select {
	case m.inputs <- r:
	case <-m.done:
		return Snapshot{}, ErrClosed
	case <-ctx.Done():
		return Snapshot{}, ctx.Err()
	}
	select {
	case s := <-reply:
		return s, nil
	case <-m.done:
		return Snapshot{}, ErrClosed
	case <-ctx.Done():
		return Snapshot{}, ctx.Err()
	}
}

// post queues an input from a backend or a timer for the loop. It never
// blocks, and drops the input once the machine has stopped.
func (m *Machine) post(r request) {
	select {
	case <-m.done:
		return
	default:
	}
	m.evMu.Lock()
	m.events = append(m.events, r)
	m.evMu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// handleEvents handles the queued events in order.
func (m *Machine) handleEvents() {
	m.evMu.Lock()
	evs := m.events
	m.events = nil
	m.evMu.Unlock()
	for _, r := range evs {
		m.handle(r)
	}
}

// Wait blocks until a published snapshot satisfies ok, and returns it.
func (m *Machine) Wait(ctx context.Context, ok func(Snapshot) bool) (Snapshot, error) {
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		if s := m.Current(); ok(s) {
			return s, nil
		}
		select {
		case <-changed:
		case <-m.done:
			if s := m.Current(); ok(s) {
				return s, nil
			}
			return m.Current(), ErrClosed
		case <-ctx.Done():
			return m.Current(), ctx.Err()
		}
	}
}

// Subscribe returns a channel that receives every published snapshot. A
// subscriber that falls behind loses the oldest snapshots it has not read
// (Seq shows the gap) but always receives the latest. cancel ends the
// subscription and closes the channel; the channel is also closed when the
// machine shuts down.
func (m *Machine) Subscribe() (snapshots <-chan Snapshot, cancel func()) {
	s := &subscriber{ch: make(chan Snapshot, 16)}
	m.mu.Lock()
	select {
	case <-m.done:
		close(s.ch)
	default:
		m.subs[s] = struct{}{}
	}
	m.mu.Unlock()
	return s.ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[s]; ok {
			delete(m.subs, s)
			close(s.ch)
		}
	}
}

type subscriber struct {
	ch chan Snapshot
}

// Shutdown disconnects the tunnel, waits until it is closed (or ctx is done),
// and ends the machine's goroutine. It is safe to call more than once.
func (m *Machine) Shutdown(ctx context.Context) error {
	var err error
	if s, cerr := m.Disconnect(ctx); cerr == nil && s.State != Disconnected {
		_, err = m.Wait(ctx, func(s Snapshot) bool { return s.State == Disconnected })
	}
	m.stop.Do(func() { close(m.quit) })
	<-m.done
	if errors.Is(err, ErrClosed) {
		err = nil
	}
	return err
}

func (m *Machine) loop() {
	defer func() {
		if m.timer != nil {
			m.timer.Stop()
		}
		m.mu.Lock()
		close(m.done)
		for s := range m.subs {
			close(s.ch)
		}
		m.subs = nil
		m.mu.Unlock()
	}()
	for {
		select {
		case r := <-m.inputs:
			if r.ping {
				r.reply <- m.snap
				continue
			}
			// Events that happened before the command came are handled
			// first, so a command sees everything reported before it.
			m.handleEvents()
			m.handle(r)
			r.reply <- m.snap
		case <-m.wake:
			m.handleEvents()
		case <-m.quit:
			return
		}
	}
}

// handle runs one input: stale backend events and timers are dropped, the
// rest go through the table, and a transition is applied and published
// before its effects are carried out.
func (m *Machine) handle(r request) {
	if r.gen != 0 && r.gen != m.gen {
		return // from a Start or Stop that has since been superseded
	}
	if r.tick == tickStart {
		m.startNow()
		return
	}
	before := m.snap
	after, eff := next(m.snap, r.in, m.clock.Now())
	if eff.configs != nil {
		m.configs = eff.configs
	}
	after.Config = m.configIn(before, after)
	if after != before {
		m.enter(before, after, r.in)
	}
	if eff.stop {
		m.stopTunnel()
	}
	if eff.start {
		m.startAttempt()
	}
}

// configIn returns the path of the config that state s uses: in Connecting,
// the one of its attempt; in Connected, the one that connected.
func (m *Machine) configIn(before, s Snapshot) string {
	switch s.State {
	case Connecting:
		return m.configs[s.Attempt%len(m.configs)].Path
	case Connected:
		return before.Config
	}
	return ""
}

// enter applies s's policy and publishes s. If the policy cannot be applied,
// the machine goes to Error(firewall) instead, stops the tunnel, and records
// whether blocking at least held.
func (m *Machine) enter(from, s Snapshot, in input) {
	s.Seq = from.Seq + 1
	if err := m.policy.Apply(s); err != nil {
		s = Snapshot{
			State:    Error,
			Cause:    CauseFirewall,
			Detail:   err.Error(),
			Lockdown: s.Lockdown,
			Since:    m.clock.Now(),
			Seq:      s.Seq,
		}
		s.BlockFailed = m.policy.Apply(s) != nil
		m.stopTunnel()
	}
	m.snap = s
	m.publish(s)
	if from.State != s.State || from.Attempt != s.Attempt || from.After != s.After || from.Cause != s.Cause {
		m.logTransition(from, s, in)
	}
}

func (m *Machine) publish(s Snapshot) {
	m.current.Store(&s)
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	for sub := range m.subs {
		select {
		case sub.ch <- s:
		default:
			select { // full: drop the oldest, keep the latest
			case <-sub.ch:
			default:
			}
			select {
			case sub.ch <- s:
			default:
			}
		}
	}
	m.mu.Unlock()
}

func (m *Machine) logTransition(from, to Snapshot, in input) {
	attrs := []any{
		slog.String("from", from.State.String()),
		slog.String("to", to.State.String()),
		slog.String("input", in.kind.String()),
	}
	switch to.State {
	case Connecting:
		attrs = append(attrs, slog.Int("attempt", to.Attempt), slog.String("config", to.Config))
	case Connected:
		attrs = append(attrs, slog.String("endpoint", to.Endpoint), slog.String("config", to.Config))
	case Disconnecting:
		attrs = append(attrs, slog.String("then", to.After.String()))
	case Error:
		attrs = append(attrs, slog.Bool("block_failed", to.BlockFailed))
	}
	if to.Cause != CauseNone {
		attrs = append(attrs, slog.String("cause", string(to.Cause)))
	}
	if to.Detail != "" {
		attrs = append(attrs, slog.String("detail", to.Detail))
	}
	level := slog.LevelInfo
	if to.State == Error {
		level = slog.LevelError
	}
	m.log.Log(context.Background(), level, "tunnel "+to.State.String(), attrs...)
}

// startAttempt starts attempt m.snap.Attempt now, or schedules it so that
// attempts start at least MinAttemptInterval apart. A new generation begins
// either way, so reports from the previous attempt are dropped from here on.
func (m *Machine) startAttempt() {
	m.gen++
	m.stopTimer()
	wait := m.lastStart.Add(MinAttemptInterval).Sub(m.clock.Now())
	if m.lastStart.IsZero() || wait <= 0 {
		m.startNow()
		return
	}
	gen := m.gen
	m.timer = m.clock.AfterFunc(wait, func() { m.post(request{gen: gen, tick: tickStart}) })
}

func (m *Machine) startNow() {
	now := m.clock.Now()
	m.lastStart = now
	n := m.snap.Attempt
	a := Attempt{
		N:        n,
		Config:   m.configs[n%len(m.configs)],
		Try:      n / len(m.configs),
		Deadline: now.Add(AttemptDeadline(n)),
	}
	gen := m.gen
	m.timer = m.clock.AfterFunc(AttemptDeadline(a.N)+AttemptGrace, func() {
		m.post(request{gen: gen, in: input{kind: inAttemptTimeout}})
	})
	m.tunnel.Start(a, &reporter{m: m, gen: gen})
}

func (m *Machine) stopTunnel() {
	m.gen++
	m.stopTimer()
	m.tunnel.Stop(&reporter{m: m, gen: m.gen})
}

func (m *Machine) stopTimer() {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
}

// reporter is the Reporter of one Start or Stop call.
type reporter struct {
	m   *Machine
	gen uint64
}

func (r *reporter) Up(endpoint string) {
	r.m.post(request{gen: r.gen, in: input{kind: inUp, endpoint: endpoint}})
}

func (r *reporter) Down(detail string) {
	r.m.post(request{gen: r.gen, in: input{kind: inDown, detail: detail}})
}

func (r *reporter) Failed(c Cause, recoverable bool, err error) {
	in := input{kind: inFailed, cause: c, recoverable: recoverable}
	if err != nil {
		in.detail = err.Error()
	}
	r.m.post(request{gen: r.gen, in: in})
}

func (r *reporter) Closed() {
	r.m.post(request{gen: r.gen, in: input{kind: inClosed}})
}
