package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"

	"github.com/warren-vpn/warren/hostmode"
)

// hostFlags are host mode's flags (warren up --mode host, and warren down).
type hostFlags struct {
	mode         string
	tun          string
	fwmark       string
	allowLAN     bool
	lockdown     bool
	manageResolv bool
	resolvConf   string
	bootstrapDNS serverList
}

func (f *hostFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "mode", "proxy", "proxy: the tunnel is for applications that use warren's proxies (no privileges); host: the whole network namespace goes through it (kernel TUN, routes, nftables kill switch; needs CAP_NET_ADMIN)")
	f.registerNames(fs)
	fs.BoolVar(&f.allowLAN, "allow-lan", false, "host mode: let the private address ranges (the LAN) through in every state")
	fs.BoolVar(&f.lockdown, "lockdown", false, "host mode: block in Disconnected too, not only while connecting or after a failure")
	fs.BoolVar(&f.manageResolv, "manage-resolv-conf", false, "host mode: point --resolv-conf at warren's DNS server (--dns on port 53) unless disconnected, and restore the original when disconnected or stopped")
	fs.Var(&f.bootstrapDNS, "bootstrap-dns", "host mode: DNS servers outside the tunnel (IP or IP:PORT, comma-separated) that resolve the endpoints' host names; default: the nameservers of resolv.conf as it was before warren, but for warren's own. Needed in a container whose resolver forwards from inside the namespace (Docker's 127.0.0.11)")
}

// serverList is a flag holding DNS servers: IP or IP:PORT (port 53 by
// default), comma-separated or repeated.
type serverList []netip.AddrPort

func (l *serverList) String() string { return joinStrings(*l) }

func (l *serverList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if a, err := netip.ParseAddr(f); err == nil {
			*l = append(*l, netip.AddrPortFrom(a, 53))
			continue
		}
		ap, err := netip.ParseAddrPort(f)
		if err != nil || ap.Port() == 0 {
			return fmt.Errorf("%q is not IP or IP:PORT", f)
		}
		*l = append(*l, ap)
	}
	return nil
}

// registerNames registers what names host mode's things: for up and down.
func (f *hostFlags) registerNames(fs *flag.FlagSet) {
	fs.StringVar(&f.tun, "tun", hostmode.DefaultTUN, "host mode: the TUN interface's name")
	fs.StringVar(&f.fwmark, "fwmark", fmt.Sprintf("%#x", hostmode.DefaultMark), "host mode: the fwmark of warren's own sockets (its routing rules and firewall use it)")
	fs.StringVar(&f.resolvConf, "resolv-conf", "/etc/resolv.conf", "host mode: the resolv.conf that --manage-resolv-conf changes (and warren down restores)")
}

func (f *hostFlags) options(log *slog.Logger) (hostmode.Options, error) {
	mark, err := strconv.ParseUint(f.fwmark, 0, 32)
	if err != nil || mark == 0 {
		return hostmode.Options{}, fmt.Errorf("--fwmark: %q is not a number from 1 to 2^32-1", f.fwmark)
	}
	return hostmode.Options{TUN: f.tun, Mark: uint32(mark), AllowLAN: f.allowLAN, Logger: log}, nil
}

// apply sets up host mode in o if --mode host.
func (f *hostFlags) apply(o *appOptions, set map[string]bool, log *slog.Logger) error {
	switch f.mode {
	case "proxy":
		for _, name := range []string{"tun", "fwmark", "allow-lan", "lockdown", "manage-resolv-conf", "resolv-conf", "bootstrap-dns"} {
			if set[name] {
				return fmt.Errorf("--%s is for --mode host", name)
			}
		}
		return nil
	case "host":
	default:
		return fmt.Errorf("--mode: %q is not proxy or host", f.mode)
	}
	opts, err := f.options(log)
	if err != nil {
		return err
	}
	opts.ProbeTargets = o.probes
	opts.BootstrapDNS = f.bootstrapDNS
	opts.Lockdown = f.lockdown
	if f.manageResolv {
		ap, err := netip.ParseAddrPort(o.dns)
		if !set["dns"] || err != nil || ap.Port() != 53 {
			return fmt.Errorf("--manage-resolv-conf needs warren's DNS server on an IP address and port 53 (e.g. --dns 127.0.0.1:53): resolv.conf cannot name a port")
		}
		opts.ResolvConf, opts.DNSServer = f.resolvConf, ap.Addr()
	}
	// The whole namespace uses the tunnel: no front-end unless asked for.
	if !set["socks5"] {
		o.socks5 = nil
	}
	if !set["dns"] {
		o.dns = ""
	}
	h, err := hostmode.New(opts)
	if err != nil {
		return err
	}
	o.host, o.lockdown = h, f.lockdown
	return nil
}

// cmdDown is `warren down`: remove what a host-mode warren that was killed
// left behind, or the kill switch that one stopped with --lockdown kept. A
// running warren without --lockdown removes its own when it stops.
func cmdDown(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("down", stderr)
	var f hostFlags
	f.registerNames(fs)
	if err := parseFlags(fs, args, getenv, nil); err != nil {
		return err
	}
	opts, err := f.options(nil)
	if err != nil {
		return err
	}
	opts.ResolvConf = f.resolvConf
	found, err := hostmode.Down(opts)
	for _, what := range found {
		fmt.Fprintf(stdout, "removed %s\n", what)
	}
	if err != nil {
		return errors.Join(errors.New("could not remove everything"), err)
	}
	if len(found) == 0 {
		fmt.Fprintln(stdout, "nothing of warren's was left")
	}
	return nil
}
