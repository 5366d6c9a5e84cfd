// Command warren is a fail-closed WireGuard client that needs no kernel
// module: it runs a userspace WireGuard tunnel and offers it to applications
// as a SOCKS5 proxy, an HTTP proxy, a DNS server and port forwards, refusing
// every flow at once unless the tunnel is verified up; a local API (and the
// status, connect, disconnect, reconnect, reload and healthcheck commands)
// watches and steers it.
//
// This file holds the command line: flags, environment, subcommands. The
// wiring is in app.go; the logic is in the packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

// version and commit are set at build time by scripts/build.sh, with
// -ldflags "-X main.version=... -X main.commit=...". A plain go build in a
// git checkout leaves version "dev" and takes the commit from the build
// information Go records.
var (
	version = "dev"
	commit  = ""
)

// shutdownTimeout bounds a clean stop after SIGINT or SIGTERM.
const shutdownTimeout = 10 * time.Second

const usage = `warren: a fail-closed WireGuard client that needs no kernel module

Usage:
  warren up [-c FILE] [flags] connect with a wg-quick config and serve the proxy
  warren demo [flags]         connect to an in-process demo peer and serve the proxy
  warren check [-c FILE]      validate a config
  warren status [--watch]     show the running warren's state (--json for the API's JSON)
  warren connect              ask the running warren to connect
  warren disconnect           ... to disconnect (it keeps refusing every flow)
  warren reconnect            ... to tear the tunnel down and connect again
  warren reload               ... to read its config again (SIGHUP does too)
  warren healthcheck          exit 0 iff the running warren is ready (for HEALTHCHECK)
  warren down                 remove what a host-mode warren left: killed, or stopped with --lockdown
  warren version              print version information

The commands that talk to a running warren take --api unix:PATH|tcp:ADDR
(default: its default socket) and, for tcp:, --api-token-file FILE (or
the token itself in WARREN_API_TOKEN).

Run 'warren COMMAND -h' for a command's flags. Every flag can also be set
with an environment variable: --socks5 is WARREN_SOCKS5, --config is
WARREN_CONFIG; a flag on the command line wins over its variable.

The WireGuard config comes from -c FILE (WARREN_CONFIG), or from the
environment: WARREN_WG_CONFIG (a config file's text), WARREN_WG_CONFIG_FILE
(its path), or one variable per key (WARREN_PRIVATE_KEY, WARREN_ADDRESS,
WARREN_PEER_PUBLIC_KEY, WARREN_PEER_ENDPOINT, ...: see 'warren up -h');
with none of these, from ` + defaultConfigPath + `. Every secret may be in a
file instead, as Docker and Kubernetes secrets are: X_FILE names the file
that holds X (WARREN_PRIVATE_KEY_FILE, WARREN_API_TOKEN_FILE, ...).
`

func main() {
	if addr := os.Getenv(envPprof); addr != "" {
		if err := servePprof(addr); err != nil {
			fmt.Fprintf(os.Stderr, "warren: %v\n", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit code. ctx ends when
// the process is asked to stop.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "up":
		err = cmdUp(ctx, args, getenv, stderr)
	case "demo":
		err = cmdDemo(ctx, args, getenv, stdout, stderr)
	case "check":
		err = cmdCheck(args, getenv, stdout, stderr)
	case "status":
		err = cmdStatus(ctx, args, getenv, stdout, stderr)
	case "connect":
		err = cmdConnect(ctx, args, getenv, stdout, stderr)
	case "disconnect":
		err = cmdDisconnect(ctx, args, getenv, stdout, stderr)
	case "reconnect":
		err = cmdReconnect(ctx, args, getenv, stdout, stderr)
	case "reload":
		err = cmdReload(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		err = cmdHealthcheck(ctx, args, getenv, stdout, stderr)
	case "down":
		err = cmdDown(args, getenv, stdout, stderr)
	case "version":
		printVersion(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "warren: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "warren %s: %v\n", cmd, err)
	return 1
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("warren "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func cmdUp(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := newFlagSet("up", stderr)
	var (
		paths     configFlags
		noConnect bool
		pf        proxyFlags
		af        apiServeFlags
		hf        hostFlags
		lf        logFlags
	)
	paths.register(fs)
	fs.BoolVar(&noConnect, "no-connect", false, "start Disconnected: serve the proxy (refusing every flow) but do not connect")
	pf.register(fs)
	hf.register(fs)
	af.register(fs)
	lf.register(fs)
	fs.Usage = usageWithEnv(fs, "warren up [-c FILE] [flags]: connect and serve the proxy")
	if err := parseFlags(fs, args, getenv, aliasC); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	src, err := configSource(paths, getenv)
	if err != nil {
		return err
	}
	configs, err := src.load(log)
	if err != nil {
		return err
	}
	o := appOptions{configs: configs, log: log}
	o.load = func() ([]*config.Config, error) { return src.load(log) }
	if err := pf.frontends(&o, given(fs), configs[0], getenv); err != nil {
		return err
	}
	if err := af.apply(&o, getenv); err != nil {
		return err
	}
	if err := hf.apply(&o, given(fs), log); err != nil {
		return err
	}
	logEffective(log, src, hf.logAttrs(), &o)
	for _, c := range configs[1:] {
		if c.Wireproxy && !c.Frontends.IsZero() {
			log.Warn("config: the listener sections of a failover config are ignored; only the first config's count", "config", c.Path)
		}
	}
	a, err := startApp(o)
	if err != nil {
		return err
	}
	if !noConnect {
		if _, err := a.machine.Connect(ctx); err != nil && ctx.Err() == nil {
			a.shutdown(context.Background())
			return err
		}
	}
	// SIGHUP reloads the config.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading the config")
			a.reload(ctx) // it logs what came of it
		case <-ctx.Done():
			return stopApp(a, log)
		}
	}
}

// stopApp shuts the app down after a signal.
func stopApp(a *app, log *slog.Logger) error {
	log.Info("stopping")
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := a.shutdown(ctx); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

func cmdDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	var (
		pf proxyFlags
		af apiServeFlags
		lf logFlags
	)
	pf.register(fs)
	af.register(fs)
	lf.register(fs)
	if err := parseFlags(fs, args, getenv, nil); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	srv, err := demo.Start(demo.Options{Logger: log.With("component", "demo-peer")})
	if err != nil {
		return err
	}
	defer srv.Close()
	o := appOptions{configs: []*config.Config{srv.ClientConfig()}, log: log}
	if err := pf.frontends(&o, given(fs), nil, getenv); err != nil {
		return err
	}
	if err := af.apply(&o, getenv); err != nil {
		return err
	}
	a, err := startApp(o)
	if err != nil {
		return err
	}
	if _, err := a.machine.Connect(ctx); err != nil && ctx.Err() == nil {
		a.shutdown(context.Background())
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = a.machine.Wait(wctx, func(s state.Snapshot) bool { return s.State == state.Connected })
	cancel()
	switch {
	case ctx.Err() != nil:
	case err != nil:
		a.shutdown(context.Background())
		return fmt.Errorf("the demo tunnel did not come up: %v (state: %v)", err, a.machine.Current())
	default:
		fmt.Fprintf(stdout, "\nwarren is connected to its demo peer through a WireGuard tunnel.\n")
		fmt.Fprintf(stdout, "Try, in another terminal:\n\n")
		if a.socks5Addr != nil {
			fmt.Fprintf(stdout, "    curl --socks5-hostname %s http://%s/\n", a.socks5Addr, demo.Name)
		}
		if a.httpAddr != nil {
			fmt.Fprintf(stdout, "    curl --proxy http://%s http://%s/\n", a.httpAddr, demo.Name)
		}
		if a.dnsAddr != nil {
			host, port, _ := net.SplitHostPort(a.dnsAddr.String())
			fmt.Fprintf(stdout, "    dig @%s -p %s %s TXT\n", host, port, demo.Name)
		}
		fmt.Fprintln(stdout)
		fmt.Fprintf(stdout, "Press Ctrl-C to stop.\n\n")
	}
	<-ctx.Done()
	return stopApp(a, log)
}

func cmdCheck(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	var paths configFlags
	paths.register(fs)
	fs.Usage = usageWithEnv(fs, "warren check [-c FILE]: validate the config that warren up would read")
	if err := parseFlags(fs, args, getenv, aliasC); err != nil {
		return err
	}
	src, err := configSource(paths, getenv)
	if err != nil {
		return err
	}
	configs, warnings, err := src.read()
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %v\n", w)
	}
	for _, cfg := range configs {
		fmt.Fprintf(stdout, "%s: valid: %d address(es), %d DNS server(s), %d peer(s)",
			cfg.Path, len(cfg.Interface.Addresses), len(cfg.Interface.DNS), len(cfg.Peers))
		if fe := cfg.Frontends; cfg.Wireproxy {
			fmt.Fprintf(stdout, "; wireproxy format: %d SOCKS5, %d HTTP, %d TCPClientTunnel, %d TCPServerTunnel",
				len(fe.SOCKS5), len(fe.HTTP), len(fe.Forwards), len(fe.Exposes))
		}
		fmt.Fprintln(stdout)
	}
	return err
}

func printVersion(w io.Writer) {
	rev, modified := commit, false
	if info, ok := debug.ReadBuildInfo(); ok && rev == "" {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	switch {
	case rev == "":
		rev = "unknown"
	case modified:
		rev += " (modified)"
	}
	fmt.Fprintf(w, "warren %s\ncommit %s\n%s %s/%s\n", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
