package main

// The run: build the binaries and the topology, measure each phase with
// both clients in turn, and take everything down.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Timings of the run itself.
const (
	// idleSettle is how long the clients rest before their idle RSS is
	// read, and before the scale phase reads its baseline.
	idleSettle = 2 * time.Second
	// scaleSettle is how long the scale phase's connections stay open
	// before RSS is read.
	scaleSettle = 2 * time.Second
	// drainTimeout bounds the wait for warren to let go of the scale
	// phase's connections.
	drainTimeout = 60 * time.Second
	// stateTimeout bounds the refusal phase's waits for warren's state.
	stateTimeout = 30 * time.Second
)

// The server as the agents reach it.
var (
	urlByName = "http://" + serverName
	urlByIP   = "http://" + tunServer.String()
)

// run measures what cfg asks for and returns the figures. It needs root;
// an *unavailableError says that it could not start at all. It takes down
// what it built, also when it fails or ctx is cancelled.
func run(ctx context.Context, cfg config, logf func(string, ...any)) (*results, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := preflight(cfg); err != nil {
		return nil, err
	}
	res := &results{cfg: cfg}
	res.machine.start = time.Now()
	res.machine.loadBefore = loadAverage()
	describeMachine(&res.machine)
	// The scale phase's connections: each of the agent, warren and the
	// server holds one descriptor for each.
	if err := raiseNoFile(uint64(cfg.conns + 1024)); err != nil {
		return nil, err
	}
	cleanStale(logf)
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", tempPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	t := newTopology(dir, logf)
	defer t.close()
	if err := build(ctx, cfg, t, &res.machine, logf); err != nil {
		return nil, err
	}
	if err := t.up(ctx, cfg); err != nil {
		return nil, err
	}
	b := &bench{cfg: cfg, t: t, res: res, logf: logf}
	if err := b.startClients(cfg); err != nil {
		return nil, err
	}
	content := makeContent(cfg.maxSize())
	res.machine.contentSize = cfg.maxSize()
	res.machine.contentDigest = fmt.Sprintf("%x", sha256.Sum256(content))

	if err := b.idle(ctx); err != nil {
		return nil, err
	}
	phases := map[string]func(context.Context) error{
		"download": func(ctx context.Context) error { return b.stream(ctx, "download") },
		"upload":   func(ctx context.Context) error { return b.stream(ctx, "upload") },
		"parallel": b.parallel,
		"ttfb":     b.ttfb,
		"scale":    b.scale,
		"refusal":  b.refusal,
	}
	first := true
	for _, p := range allPhases {
		if !cfg.has(p) {
			continue
		}
		if !first && cfg.fresh {
			if err := b.restart(ctx); err != nil {
				return nil, fmt.Errorf("before phase %s: %w", p, err)
			}
		}
		first = false
		logf("phase %s", p)
		if err := phases[p](ctx); err != nil {
			return nil, fmt.Errorf("phase %s: %w", p, err)
		}
	}
	b.startRSS.label = "RSS at the start of each phase (MiB), where its peak starts from"
	res.details = append(res.details, b.startRSS)
	res.machine.end = time.Now()
	res.machine.loadAfter = loadAverage()
	res.sortRows()
	return res, nil
}

// build builds warren from ./cmd/warren and the upstream wireguard-go at
// go.mod's version (unless cfg names binaries), into t.dir.
func build(ctx context.Context, cfg config, t *topology, m *machine, logf func(string, ...any)) error {
	t.warrenBin, t.wireguardGoBin = cfg.warren, cfg.wireguardGo
	m.warren = "the binary " + cfg.warren
	m.reference = "the binary " + cfg.wireguardGo + " on a kernel TUN, and the kernel's TCP"
	if cfg.warren != "" && cfg.wireguardGo != "" {
		return nil
	}
	gocmd := goTool()
	out, err := exec.CommandContext(ctx, gocmd, "env", "GOMOD").Output()
	root := filepath.Dir(strings.TrimSpace(string(out)))
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "go.mod") {
		return fmt.Errorf("cannot find warren's module (run from the repository): go env GOMOD: %v %s", err, out)
	}
	// As scripts/build.sh builds a release (static: a dynamically linked
	// warren has 1.5 MiB more RSS), unless cfg asks for a plain go build.
	how := "CGO_ENABLED=0 go build -trimpath, as a release"
	if cfg.plainBuild {
		how = "go build"
	}
	goBuild := func(out, pkg string) error {
		args := []string{"build", "-trimpath", "-o", out, pkg}
		env := append(os.Environ(), "CGO_ENABLED=0")
		if cfg.plainBuild {
			args, env = []string{"build", "-o", out, pkg}, nil
		}
		cmd := exec.CommandContext(ctx, gocmd, args...)
		cmd.Dir, cmd.Env = root, env
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}
	if cfg.warren == "" {
		logf("building warren from %s", filepath.Join(root, "cmd/warren"))
		t.warrenBin = filepath.Join(t.dir, "warren")
		if err := goBuild(t.warrenBin, "./cmd/warren"); err != nil {
			return err
		}
		desc, _ := exec.CommandContext(ctx, "git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
		m.warren = fmt.Sprintf("./cmd/warren at %s (%s), SOCKS5 on loopback in its namespace",
			strings.TrimSpace(string(desc)), how)
	}
	if cfg.wireguardGo == "" {
		const mod = "golang.zx2c4.com/wireguard"
		v, err := exec.CommandContext(ctx, gocmd, "list", "-m", "-f", "{{.Version}}", mod).Output()
		if err != nil {
			return fmt.Errorf("go list -m %s: %v", mod, err)
		}
		logf("building wireguard-go %s", strings.TrimSpace(string(v)))
		t.wireguardGoBin = filepath.Join(t.dir, "wireguard-go")
		if err := goBuild(t.wireguardGoBin, mod); err != nil {
			return err
		}
		m.reference = fmt.Sprintf("upstream wireguard-go (%s %s, go.mod's version; %s) on a kernel TUN, and the kernel's TCP",
			mod, strings.TrimSpace(string(v)), how)
	}
	return nil
}

// client is one of the two ways to the server.
type client struct {
	name  string
	agent *agentProc
	// tunnel is the process whose CPU and memory are measured: warren, or
	// the reference's wireguard-go.
	tunnel *proc
}

// bench is one run in progress.
type bench struct {
	cfg     config
	t       *topology
	res     *results
	logf    func(string, ...any)
	clients []*client // in allClients order

	// startRSS is each tunnel process's RSS at the start of each phase.
	startRSS detail
}

func (b *bench) startClients(cfg config) error {
	if cfg.measures(clientWarren) {
		a, err := b.t.startAgent(clientWarren, b.t.warNS, cfg, "-socks5", warrenSOCKS5)
		if err != nil {
			return err
		}
		b.clients = append(b.clients, &client{name: clientWarren, agent: a, tunnel: b.t.w})
	}
	if cfg.measures(clientReference) {
		dns := netip.AddrPortFrom(tunServer, dnsPort).String()
		a, err := b.t.startAgent(clientReference, b.t.refNS, cfg, "-dns", dns)
		if err != nil {
			return err
		}
		b.clients = append(b.clients, &client{name: clientReference, agent: a, tunnel: b.t.refPeer})
	}
	// What is measured must be the program itself, not ip netns exec.
	for _, c := range b.clients {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.tunnel.pid()))
		want := filepath.Base(c.tunnel.prog)
		if err != nil || !strings.HasPrefix(want, strings.TrimSpace(string(comm))) {
			return fmt.Errorf("%s: pid %d is %q, not %s (%v)", c.name, c.tunnel.pid(), bytesTrim(comm), want, err)
		}
	}
	return nil
}

// warmUpRun is the repetition that the download, upload and parallel
// phases run before they measure, so that their figures are those of
// processes that have grown their heaps and buffers for the load, as a
// long-running warren has.
const warmUpRun = -1

// order is the order of the clients in repetition rep: they alternate
// which goes first.
func (b *bench) order(rep int) []*client {
	cs := append([]*client(nil), b.clients...)
	if rep%2 != 0 {
		for i, j := 0, len(cs)-1; i < j; i, j = i+1, j-1 {
			cs[i], cs[j] = cs[j], cs[i]
		}
	}
	return cs
}

// add adds a row with each client's value from vals; a client that is not
// measured has none.
func (b *bench) add(key, figure string, vals map[string]value) {
	b.res.add(key, figure, vals[clientWarren], vals[clientReference])
}

func (b *bench) count(resp response) {
	b.res.digestsOK += resp.DigestsOK
	b.res.digestsBad += resp.DigestsBad
}

func (b *bench) call(ctx context.Context, c *client, req request) (response, error) {
	resp, err := c.agent.call(ctx, req)
	b.count(resp)
	if err == nil && c.tunnel.exited() {
		err = fmt.Errorf("%s exited\n%s", c.tunnel.name, c.tunnel.tail())
	}
	return resp, err
}

const mib = 1 << 20

// warmUp makes one request by name through each client, so that both
// tunnels have a session and warren has the name in its cache.
func (b *bench) warmUp(ctx context.Context) error {
	for _, c := range b.clients {
		if _, err := b.call(ctx, c, request{Op: "download", URL: urlByName, Size: b.cfg.small}); err != nil {
			return fmt.Errorf("first request: %w", err)
		}
	}
	return nil
}

// restart starts warren and the reference's wireguard-go again, so that
// the next phase's memory figures are its own and not what the Go heap
// kept of the phases before: new processes, connected and warmed up.
func (b *bench) restart(ctx context.Context) error {
	b.logf("starting warren and the reference's wireguard-go again")
	for _, c := range b.clients {
		c.tunnel.stop(syscall.SIGTERM, stopGrace)
		var err error
		if c.name == clientWarren {
			err = b.t.startWarren(ctx, b.cfg)
			c.tunnel = b.t.w
		} else {
			err = b.t.startReference(ctx, b.cfg)
			c.tunnel = b.t.refPeer
		}
		if err != nil {
			return fmt.Errorf("restart %s: %w", c.name, err)
		}
	}
	return b.warmUp(ctx)
}

// idle makes the first requests and reads the RSS of the tunnel processes
// once they have rested.
func (b *bench) idle(ctx context.Context) error {
	if err := b.warmUp(ctx); err != nil {
		return err
	}
	time.Sleep(idleSettle)
	rss, anon, file := map[string]value{}, map[string]value{}, map[string]value{}
	for _, c := range b.clients {
		m, err := procMem(c.tunnel.pid())
		if err != nil {
			return err
		}
		rss[c.name] = measured(float64(m.rss) / mib)
		anon[c.name] = measured(float64(m.anon) / mib)
		file[c.name] = measured(float64(m.file) / mib)
	}
	b.add("rss-idle", "RSS idle: connected, after one request (MiB)", rss)
	// The two parts of it: what the process allocated, and the pages of
	// its binary that it has mapped (shared with the page cache, and about
	// as large as the part of the binary it has touched, see RESULTS.md).
	b.add("rss-idle-anon", "RSS idle, anonymous: heap and stacks (RssAnon, MiB)", anon)
	b.add("rss-idle-file", "RSS idle, file-backed: the binary's mapped pages (RssFile, MiB)", file)
	return nil
}

// resetPeaks resets the peak RSS of every client's tunnel process at the
// start of phase.
func (b *bench) resetPeaks(phase string) error {
	for _, c := range b.clients {
		if err := b.resetPeak(phase, c); err != nil {
			return err
		}
	}
	return nil
}

// resetPeak resets the peak RSS of c's tunnel process, and notes its RSS
// then: a peak is never below it, as Go keeps the heap it grew for a while.
func (b *bench) resetPeak(phase string, c *client) error {
	m, err := procMem(c.tunnel.pid())
	if err != nil {
		return err
	}
	if err := resetPeak(c.tunnel.pid()); err != nil {
		return err
	}
	d := &b.startRSS
	if !slices.Contains(d.names, phase) {
		d.names = append(d.names, phase)
	}
	if c.name == clientWarren {
		d.warren = append(d.warren, float64(m.rss)/mib)
	} else {
		d.reference = append(d.reference, float64(m.rss)/mib)
	}
	return nil
}

// peaks adds the row of the peak RSS (since resetPeaks) during phase.
func (b *bench) peaks(phase, what string) error {
	vals := map[string]value{}
	for _, c := range b.clients {
		m, err := procMem(c.tunnel.pid())
		if err != nil {
			return err
		}
		vals[c.name] = measured(float64(m.peak) / mib)
	}
	b.add("rss-"+phase, "peak RSS (VmHWM) during "+what+" (MiB)", vals)
	return nil
}

// loss counts what was lost while a client moved data: segments the
// server's kernel TCP sent again, segments the client namespace's kernel
// TCP sent again (the reference's; warren's TCP is its own, and not seen
// here), and datagrams dropped for a full UDP receive buffer at either end.
type loss struct{ srvRetrans, cliRetrans, udpDrops int64 }

func (l loss) add(o loss) loss {
	return loss{l.srvRetrans + o.srvRetrans, l.cliRetrans + o.cliRetrans, l.udpDrops + o.udpDrops}
}

func (l loss) sub(o loss) loss {
	return loss{l.srvRetrans - o.srvRetrans, l.cliRetrans - o.cliRetrans, l.udpDrops - o.udpDrops}
}

func (b *bench) loss(c *client) (loss, error) {
	sr, su, err := netSNMP(b.t.server.pid())
	if err != nil {
		return loss{}, err
	}
	cr, cu, err := netSNMP(c.tunnel.pid())
	return loss{srvRetrans: sr, cliRetrans: cr, udpDrops: su + cu}, err
}

// transfer is one op that moves data, with what it cost the client's
// tunnel process and what was lost meanwhile.
type transfer struct {
	resp      response
	tunnelCPU time.Duration
	loss      loss
}

func (b *bench) transfer(ctx context.Context, c *client, req request) (transfer, error) {
	var tr transfer
	u0, s0, err := procCPU(c.tunnel.pid())
	if err != nil {
		return tr, err
	}
	l0, err := b.loss(c)
	if err != nil {
		return tr, err
	}
	if tr.resp, err = b.call(ctx, c, req); err != nil {
		return tr, err
	}
	u1, s1, err := procCPU(c.tunnel.pid())
	if err != nil {
		return tr, err
	}
	l1, err := b.loss(c)
	tr.tunnelCPU, tr.loss = u1-u0+s1-s0, l1.sub(l0)
	return tr, err
}

// lossDetail is the line that says what was lost in a phase.
func lossDetail(phase string, losses map[string]loss) detail {
	d := detail{label: phase + ", all runs", counts: true,
		names: []string{"server TCP retransmits", "client namespace's kernel TCP retransmits", "UDP receive-buffer drops"}}
	for name, l := range losses {
		v := []float64{float64(l.srvRetrans), float64(l.cliRetrans), float64(l.udpDrops)}
		if name == clientWarren {
			d.warren = v
		} else {
			d.reference = v
		}
	}
	return d
}

// stream is the single-stream download or upload phase, with its CPU
// figures.
func (b *bench) stream(ctx context.Context, op string) error {
	type acc struct {
		speeds    []float64
		tunnelCPU time.Duration
		appSys    float64 // seconds
		moved     int64
	}
	accs := map[string]*acc{}
	losses := map[string]loss{}
	for _, c := range b.clients {
		accs[c.name] = &acc{}
	}
	if err := b.resetPeaks(op); err != nil {
		return err
	}
	for rep := warmUpRun; rep < b.cfg.runs; rep++ {
		for _, c := range b.order(rep) {
			tr, err := b.transfer(ctx, c, request{Op: op, URL: urlByName, Size: b.cfg.large})
			if err != nil {
				return err
			}
			if rep == warmUpRun {
				b.logf("%s %s, not measured: %.1f MB/s", c.name, op, float64(tr.resp.Bytes)/tr.resp.Seconds/1e6)
				continue
			}
			a := accs[c.name]
			speed := float64(tr.resp.Bytes) / tr.resp.Seconds / 1e6
			a.speeds = append(a.speeds, speed)
			a.tunnelCPU += tr.tunnelCPU
			a.appSys += tr.resp.SysCPU
			a.moved += tr.resp.Bytes
			losses[c.name] = losses[c.name].add(tr.loss)
			b.logf("%s %s %d/%d: %.1f MB/s; CPU: tunnel process %.2f s, app kernel %.2f s; loss %+v",
				c.name, op, rep+1, b.cfg.runs, speed, tr.tunnelCPU.Seconds(), tr.resp.SysCPU, tr.loss)
		}
	}
	speed, total, tunnel := map[string]value{}, map[string]value{}, map[string]value{}
	d := detail{label: op + " MB/s, each run"}
	for _, c := range b.clients {
		a := accs[c.name]
		gib := float64(a.moved) / (1 << 30)
		speed[c.name] = measured(median(append([]float64(nil), a.speeds...)))
		total[c.name] = measured((a.tunnelCPU.Seconds() + a.appSys) / gib)
		tunnel[c.name] = measured(a.tunnelCPU.Seconds() / gib)
		if c.name == clientWarren {
			d.warren = a.speeds
		} else {
			d.reference = a.speeds
		}
	}
	b.add(op, fmt.Sprintf("single-stream %s, %s (MB/s, median of %d)", op, sizeString(b.cfg.large), b.cfg.runs), speed)
	b.add("cpu-"+op, fmt.Sprintf("CPU per GiB, %s: tunnel process + app's kernel time (s)", op), total)
	b.add("cpu-"+op+"-tunnel", fmt.Sprintf("CPU per GiB, %s: tunnel process alone (s)", op), tunnel)
	b.res.details = append(b.res.details, d, lossDetail(op, losses))
	return b.peaks(op, "single-stream "+op+"s")
}

func (b *bench) parallel(ctx context.Context) error {
	speeds := map[string][]float64{}
	losses := map[string]loss{}
	if err := b.resetPeaks("parallel"); err != nil {
		return err
	}
	for rep := warmUpRun; rep < b.cfg.runs; rep++ {
		for _, c := range b.order(rep) {
			tr, err := b.transfer(ctx, c, request{Op: "parallel", URL: urlByName, Size: b.cfg.medium, N: b.cfg.parallel})
			if err != nil {
				return err
			}
			if rep == warmUpRun {
				continue
			}
			speed := float64(tr.resp.Bytes) / tr.resp.Seconds / 1e6
			speeds[c.name] = append(speeds[c.name], speed)
			losses[c.name] = losses[c.name].add(tr.loss)
			b.logf("%s parallel %d/%d: %.1f MB/s; loss %+v", c.name, rep+1, b.cfg.runs, speed, tr.loss)
		}
	}
	vals := map[string]value{}
	for name, s := range speeds {
		vals[name] = measured(median(append([]float64(nil), s...)))
	}
	b.add("parallel", fmt.Sprintf("%d parallel downloads of %s, aggregate (MB/s, median of %d)", b.cfg.parallel, sizeString(b.cfg.medium), b.cfg.runs), vals)
	b.res.details = append(b.res.details,
		detail{label: "parallel MB/s, each run", warren: speeds[clientWarren], reference: speeds[clientReference]},
		lossDetail("parallel", losses))
	return b.peaks("parallel", fmt.Sprintf("%d parallel downloads", b.cfg.parallel))
}

func (b *bench) ttfb(ctx context.Context) error {
	modes := []struct{ name, url string }{{"name", urlByName}, {"IP", urlByIP}}
	samples := map[string]map[string][]float64{} // mode, client
	for _, m := range modes {
		samples[m.name] = map[string][]float64{}
	}
	if err := b.resetPeaks("ttfb"); err != nil {
		return err
	}
	for rep := range b.cfg.runs {
		for _, c := range b.order(rep) {
			for _, m := range modes {
				resp, err := b.call(ctx, c, request{Op: "ttfb", URL: m.url, Size: b.cfg.small, N: b.cfg.requests})
				if err != nil {
					return err
				}
				samples[m.name][c.name] = append(samples[m.name][c.name], resp.Samples...)
			}
		}
	}
	for _, m := range modes {
		for _, p := range []float64{50, 90} {
			vals := map[string]value{}
			for name, s := range samples[m.name] {
				vals[name] = measured(percentile(s, p) * 1e3)
			}
			key := fmt.Sprintf("ttfb-%s-p%.0f", strings.ToLower(m.name), p)
			b.add(key, fmt.Sprintf("TTFB by %s, %d × %s, a new connection each: p%.0f (ms)",
				m.name, b.cfg.requests*b.cfg.runs, sizeString(b.cfg.small), p), vals)
		}
	}
	return b.peaks("ttfb", "TTFB requests")
}

// scale opens cfg.conns idle connections through each client in turn and
// holds them: the time to open them all, and for warren the growth of its
// RSS per connection.
func (b *bench) scale(ctx context.Context) error {
	open, perConn := map[string]value{}, map[string]value{}
	peak := map[string]value{}
	sink := netip.AddrPortFrom(tunServer, sinkPort).String()
	for _, c := range b.clients {
		time.Sleep(idleSettle)
		before, err := procMem(c.tunnel.pid())
		if err != nil {
			return err
		}
		if err := b.resetPeak("scale", c); err != nil {
			return err
		}
		resp, err := b.call(ctx, c, request{Op: "open", Addr: sink, N: b.cfg.conns, Workers: b.cfg.openWorkers})
		if err != nil {
			return err
		}
		time.Sleep(scaleSettle)
		after, err := procMem(c.tunnel.pid())
		if err != nil {
			return err
		}
		open[c.name] = measured(resp.Seconds)
		peak[c.name] = measured(float64(after.peak) / mib)
		if c.name == clientWarren {
			perConn[c.name] = measured(float64(after.rss-before.rss) / float64(b.cfg.conns) / 1024)
		} else {
			perConn[c.name] = notApplicable // the kernel holds the connections, not wireguard-go
		}
		b.logf("%s: %d connections open in %.2f s; RSS %.1f -> %.1f MiB", c.name, b.cfg.conns, resp.Seconds,
			float64(before.rss)/mib, float64(after.rss)/mib)
		if _, err := b.call(ctx, c, request{Op: "close"}); err != nil {
			return err
		}
		if c.name == clientWarren {
			if err := b.waitDrained(ctx); err != nil {
				return err
			}
		}
	}
	b.add("scale-open", fmt.Sprintf("open %d idle connections, %d at a time (s)", b.cfg.conns, b.cfg.openWorkers), open)
	b.add("scale-memory", fmt.Sprintf("memory per idle connection: RSS growth / %d (KiB)", b.cfg.conns), perConn)
	b.add("rss-scale", fmt.Sprintf("peak RSS (VmHWM) during %d idle connections (MiB)", b.cfg.conns), peak)
	time.Sleep(idleSettle)
	return nil
}

// waitDrained waits until warren has no live flow.
func (b *bench) waitDrained(ctx context.Context) error {
	deadline := time.Now().Add(drainTimeout)
	for {
		st, err := b.t.warrenStatus(ctx)
		if err == nil && st.Flows == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warren still has flows %v after the connections closed (%v)", drainTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// refusal times SOCKS5 CONNECTs while warren is connecting: its peer's
// UDP is dropped in its namespace and it is told to reconnect.
func (b *bench) refusal(ctx context.Context) (err error) {
	var w *client
	for _, c := range b.clients {
		if c.name == clientWarren {
			w = c
		}
	}
	if w == nil {
		return nil // the reference has no proxy to refuse
	}
	if err := b.resetPeak("refusal", w); err != nil {
		return err
	}
	if err := b.t.blackhole(ctx, true); err != nil {
		return err
	}
	lifted := false
	defer func() {
		if !lifted {
			err = errors.Join(err, b.t.blackhole(context.Background(), false))
		}
	}()
	if err := b.t.warrenCommand(ctx, "reconnect"); err != nil {
		return err
	}
	if err := b.t.waitWarren(ctx, "connecting", stateTimeout); err != nil {
		return err
	}
	target := netip.AddrPortFrom(tunServer, httpPort).String()
	resp, err := b.call(ctx, w, request{Op: "refuse", Addr: target, N: b.cfg.refusals})
	if err != nil {
		return err
	}
	st, err := b.t.warrenStatus(ctx)
	if err != nil {
		return err
	}
	if st.State != "connecting" {
		return fmt.Errorf("warren was %s, not connecting, at the end of the refusals", st.State)
	}
	m, err := procMem(w.tunnel.pid())
	if err != nil {
		return err
	}
	lifted = true
	if err := b.t.blackhole(ctx, false); err != nil {
		return err
	}
	if err := b.t.waitWarren(ctx, "connected", stateTimeout); err != nil {
		return err
	}
	for _, p := range []float64{50, 99} {
		b.add(fmt.Sprintf("refusal-p%.0f", p), fmt.Sprintf("SOCKS5 CONNECT refused while connecting, %d: p%.0f (ms)", b.cfg.refusals, p),
			map[string]value{clientWarren: measured(percentile(resp.Samples, p) * 1e3), clientReference: notApplicable})
	}
	b.add("rss-refusal", "peak RSS (VmHWM) during the refusals (MiB)",
		map[string]value{clientWarren: measured(float64(m.peak) / mib), clientReference: notApplicable})
	return nil
}
