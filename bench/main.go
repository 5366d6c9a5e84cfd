// Command bench measures warren's SOCKS5 proxy against the reference path
// it means to match: the upstream wireguard-go on a kernel TUN. It is the
// benchmark of issue 8, and needs root (network namespaces, TUN devices,
// nftables) and Linux.
//
// One run builds this topology, all of it in namespaces of its own (the
// root namespace is not touched), and takes it down at the end, also when
// it fails:
//
//	warren namespace (wbw<pid>)                server namespace (wbs<pid>)
//	  agent ── SOCKS5 127.0.0.1:1080 ── warren ── 10.80.1.2 ── 10.80.1.1 ┐
//	                                                                     wireguard-go on a kernel TUN (wbs<pid>)
//	reference namespace (wbr<pid>)                                       tunnel 10.79.0.1: HTTP :80, a sink :9,
//	  agent ── kernel TCP ── wireguard-go (TUN wbr<pid>) ── 10.80.2.2 ── 10.80.2.1 ┘  DNS :53 (files.warren-bench)
//
// Both clients are peers of the same server; each runs the same agent (this
// binary, re-executed with a role) with the same HTTP client code, which
// differs only in its dialer: SOCKS5 with host names to warren, or the
// kernel's TCP with a resolver that asks the tunnel's DNS server. The
// phases alternate between the two clients at every repetition.
//
// bench owns the measuring: the topology, the server helper, the agents and
// the report. It knows nothing of warren's insides: warren is the binary
// built from ./cmd/warren, driven by its command line and its API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// roleEnv, when set, makes this binary one of the benchmark's helpers
// instead of the benchmark: "server" (in the server namespace) or "agent"
// (in a client namespace).
const roleEnv = "WARREN_BENCH_ROLE"

// The phases, in the order they run whatever order -phases gives:
// refusal last, as it takes warren's tunnel down for a while.
var allPhases = []string{"download", "upload", "parallel", "ttfb", "scale", "refusal"}

// The clients.
const (
	clientWarren    = "warren"
	clientReference = "reference"
)

var allClients = []string{clientWarren, clientReference}

// config is what one run measures. The zero value is not useful; start
// from defaultConfig.
type config struct {
	phases      []string // a subset of allPhases
	clients     []string // a subset of allClients
	runs        int      // repetitions of download, upload, parallel and ttfb
	large       int64    // the single-stream file
	medium      int64    // each of the parallel files
	small       int64    // the TTFB file
	parallel    int      // parallel downloads
	requests    int      // TTFB requests per repetition, by name and by IP each
	conns       int      // idle connections of the scale phase
	openWorkers int      // how many of them are being opened at a time
	refusals    int      // SOCKS5 CONNECTs timed while warren is connecting
	fresh       bool     // restart the tunnel processes before each phase

	warren      string   // a warren binary; "" builds ./cmd/warren
	wireguardGo string   // a wireguard-go binary; "" builds the module in go.mod
	warrenArgs  []string // more flags for warren up
	out         string   // a markdown file to write the results to; "" for none
	// plainBuild builds warren and wireguard-go with a plain go build, as
	// cmd/warren's tests build warren, rather than as a release: the smoke
	// test shares their build cache so.
	plainBuild bool
}

func defaultConfig() config {
	return config{
		phases:      allPhases,
		clients:     allClients,
		runs:        5,
		large:       100 << 20,
		medium:      1 << 20,
		small:       1 << 10,
		parallel:    50,
		requests:    100,
		conns:       10000,
		openWorkers: 50,
		refusals:    200,
		fresh:       true,
	}
}

func (c *config) has(phase string) bool       { return slices.Contains(c.phases, phase) }
func (c *config) measures(client string) bool { return slices.Contains(c.clients, client) }

// maxSize is the largest file the run moves.
func (c *config) maxSize() int64 { return max(c.large, c.medium, c.small) }

func (c *config) check() error {
	if c.runs < 1 || c.parallel < 1 || c.requests < 1 || c.conns < 1 || c.openWorkers < 1 || c.refusals < 1 {
		return errors.New("-runs, -parallel, -requests, -conns, -open-workers and -refusals must be at least 1")
	}
	if c.large < 1 || c.medium < 1 || c.small < 1 {
		return errors.New("the sizes must be at least 1 byte")
	}
	if len(c.phases) == 0 || len(c.clients) == 0 {
		return errors.New("no phase or no client to run")
	}
	return nil
}

func (c *config) register(fs *flag.FlagSet) {
	fs.Var(listFlag{&c.phases, allPhases}, "phases", "comma-separated phases to run: "+strings.Join(allPhases, ","))
	fs.Var(listFlag{&c.clients, allClients}, "clients", "comma-separated clients to measure: "+strings.Join(allClients, ","))
	fs.IntVar(&c.runs, "runs", c.runs, "repetitions of download, upload, parallel and ttfb (medians and percentiles are over all of them)")
	fs.Var(sizeFlag{&c.large}, "size", "size of the single-stream download and upload (e.g. 100MiB)")
	fs.Var(sizeFlag{&c.medium}, "parallel-size", "size of each parallel download")
	fs.Var(sizeFlag{&c.small}, "small-size", "size of each TTFB request's file")
	fs.IntVar(&c.parallel, "parallel", c.parallel, "number of parallel downloads")
	fs.IntVar(&c.requests, "requests", c.requests, "sequential TTFB requests per repetition, by name and by IP each")
	fs.IntVar(&c.conns, "conns", c.conns, "idle connections to open in the scale phase")
	fs.IntVar(&c.openWorkers, "open-workers", c.openWorkers, "connections being opened at a time in the scale phase")
	fs.IntVar(&c.refusals, "refusals", c.refusals, "SOCKS5 CONNECTs to time while warren is connecting")
	fs.BoolVar(&c.fresh, "fresh", c.fresh, "restart warren and the reference's wireguard-go before each phase, so that each phase's peak RSS is its own (with -fresh=false, a peak includes the heap that earlier phases left)")
	fs.StringVar(&c.warren, "warren", "", "use this warren binary instead of building ./cmd/warren")
	fs.StringVar(&c.wireguardGo, "wireguard-go", "", "use this wireguard-go binary instead of building the version in go.mod")
	fs.Func("warren-args", "more flags for warren up, space-separated (e.g. \"--log-level debug\")", func(s string) error {
		c.warrenArgs = strings.Fields(s)
		return nil
	})
	fs.StringVar(&c.out, "o", "", "also write the results as markdown to this file")
}

func main() {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Args[1:]))
	}
	cfg := defaultConfig()
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	quiet := fs.Bool("q", false, "do not print progress to stderr")
	cfg.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./bench [flags]   (as root, from the repository)\n\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if fs.NArg() > 0 {
		fs.Usage()
		os.Exit(2)
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...) }
	if *quiet {
		logf = func(string, ...any) {}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	res, err := run(ctx, cfg, logf)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	res.writeText(os.Stdout)
	if cfg.out != "" {
		f, err := os.Create(cfg.out)
		if err == nil {
			res.writeMarkdown(f)
			err = f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	if bad := res.problems(); len(bad) > 0 {
		fmt.Fprintln(os.Stderr, "bench: "+strings.Join(bad, "; "))
		os.Exit(1)
	}
}

// unavailableError says why the benchmark cannot run on this machine at
// all (as opposed to failing while it runs).
type unavailableError struct{ why string }

func (e *unavailableError) Error() string { return "cannot run: " + e.why }

// runRole runs this process as one of the benchmark's helpers and returns
// its exit code.
func runRole(role string, args []string) int {
	var err error
	switch role {
	case "server":
		err = serverMain(args)
	case "agent":
		err = agentMain(args)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

// listFlag is a comma-separated subset of a fixed list, kept in the list's
// order.
type listFlag struct {
	v       *[]string
	choices []string
}

func (f listFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strings.Join(*f.v, ",")
}

func (f listFlag) Set(s string) error {
	var got []string
	for _, x := range strings.Split(s, ",") {
		x = strings.TrimSpace(x)
		if !slices.Contains(f.choices, x) {
			return fmt.Errorf("%q is not one of %s", x, strings.Join(f.choices, ","))
		}
		got = append(got, x)
	}
	*f.v = nil
	for _, c := range f.choices {
		if slices.Contains(got, c) {
			*f.v = append(*f.v, c)
		}
	}
	return nil
}

// sizeFlag is a size in bytes, with an optional KiB, MiB or GiB suffix.
type sizeFlag struct{ v *int64 }

func (f sizeFlag) String() string {
	if f.v == nil {
		return ""
	}
	return sizeString(*f.v)
}

func (f sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f.v = n
	return nil
}

var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}, {"", 0}}

func parseSize(s string) (int64, error) {
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
			if err != nil || n < 0 || n > 1<<40>>u.shift {
				return 0, fmt.Errorf("bad size %q: want e.g. 100MiB, 64KiB or 1000", s)
			}
			return n << u.shift, nil
		}
	}
	return 0, fmt.Errorf("bad size %q", s)
}

// sizeString writes n in the largest unit that divides it.
func sizeString(n int64) string {
	for _, u := range sizeUnits[:3] {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprintf("%d B", n)
}
