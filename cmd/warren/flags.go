package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/dnsserver"
	"github.com/warren-vpn/warren/proxy"
)

// envName is the environment variable of a flag: --socks5 is WARREN_SOCKS5.
func envName(flagName string) string {
	return "WARREN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// errUsage is returned for a bad command line, once the reason and the
// usage have been printed.
var errUsage = errors.New("usage")

// parseFlags sets fs's flags from args and then, for each flag args did not
// set, from its environment variable: a flag on the command line wins over
// its variable. aliases maps short names to the flags they stand for (-c for
// --config); they have no variable of their own. A bad variable is an error
// that names it; a bad command line is errUsage.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string, aliases map[string]string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage // fs has printed the reason and the usage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	onCommandLine := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) {
		onCommandLine[f.Name] = true
		if name, ok := aliases[f.Name]; ok {
			onCommandLine[name] = true
		}
	})
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if _, alias := aliases[f.Name]; err != nil || alias || onCommandLine[f.Name] {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s: %v", name, serr)
			}
		}
	})
	return err
}

// configFlags holds -c/--config, which may be given several times (or, in
// WARREN_CONFIG, as a comma-separated list): the configs to try in turn.
type configFlags []string

func (c *configFlags) register(fs *flag.FlagSet) {
	usage := "wg-quick config file; give it several times to fail over between configs in this order"
	fs.Var(c, "config", usage)
	fs.Var(c, "c", "short for --config")
}

func (c *configFlags) String() string { return strings.Join(*c, ",") }

func (c *configFlags) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*c = append(*c, p)
		}
	}
	return nil
}

// aliasC makes -c stand for --config.
var aliasC = map[string]string{"c": "config"}

// logFlags are the logging flags every long-running command has.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", l.format)
}

// proxyFlags are the front-ends' flags, shared by up and demo.
type proxyFlags struct {
	socks5, socks5User, socks5PasswordFile string
	http, httpUser, httpPasswordFile       string
	dns                                    string
	forwards                               forwardList
	exposes                                exposeList
	probes                                 addrList
	hold                                   time.Duration

	// Limits and access.
	maxFlows, maxFlowsPerClient      int
	handshakeTimeout, udpIdleTimeout time.Duration
	allowFrom                        prefixList
	allowUnauthenticatedRemote       bool
	dnsCacheEntries                  int
	dnsCacheSize                     byteSize
	dnsMaxInFlight                   int
}

// off turns a listener off.
const off = "off"

func (p *proxyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.socks5, "socks5", "127.0.0.1:1080", "listen address of the SOCKS5 proxy, or off")
	fs.StringVar(&p.socks5User, "socks5-user", "", "require this user name from SOCKS5 clients (RFC 1929); the password comes from --socks5-password-file or WARREN_SOCKS5_PASSWORD")
	fs.StringVar(&p.socks5PasswordFile, "socks5-password-file", "", "file holding the SOCKS5 password (one line)")
	fs.StringVar(&p.http, "http", off, "listen address of the HTTP proxy (e.g. 127.0.0.1:8118), or off")
	fs.StringVar(&p.httpUser, "http-user", "", "require this user name from HTTP proxy clients (Basic auth); the password comes from --http-password-file or WARREN_HTTP_PASSWORD")
	fs.StringVar(&p.httpPasswordFile, "http-password-file", "", "file holding the HTTP proxy password (one line)")
	fs.StringVar(&p.dns, "dns", "127.0.0.1:5353", "listen address (UDP and TCP) of the DNS server that answers through the tunnel, or off")
	fs.Var(&p.forwards, "forward", "[tcp:|udp:]LOCAL_ADDR=TUNNEL_ADDR: listen on LOCAL_ADDR (TCP and UDP unless a prefix picks one) and forward to TUNNEL_ADDR inside the tunnel; repeat for more")
	fs.Var(&p.exposes, "expose", "TUNNEL_PORT=LOCAL_ADDR: listen on TUNNEL_PORT of warren's tunnel addresses and forward to LOCAL_ADDR on this host; repeat for more")
	fs.Var(&p.probes, "probe", "IP address inside the tunnel that answers ping, used to verify the tunnel besides the config's DNS servers (comma-separated, or repeat the flag)")
	fs.DurationVar(&p.hold, "hold", 0, "while connecting, how long a new connection waits for the tunnel before it is refused (e.g. 10s); 0 refuses at once")

	fs.IntVar(&p.maxFlows, "max-flows", proxy.DefaultMaxFlows, "most flows open at once, over all clients: SOCKS5 and HTTP proxy connections, forwarded connections and UDP sessions; 0 for no limit")
	fs.IntVar(&p.maxFlowsPerClient, "max-flows-per-client", proxy.DefaultMaxFlowsPerClient, "most flows open at once from one client IP address; 0 for no limit")
	fs.DurationVar(&p.handshakeTimeout, "handshake-timeout", proxy.DefaultHandshakeTimeout, "how long a SOCKS5 or HTTP proxy client has to send its whole request (SOCKS5: greeting, authentication and request; HTTP: the headers) before it is disconnected")
	fs.DurationVar(&p.udpIdleTimeout, "udp-idle-timeout", proxy.DefaultUDPIdleTimeout, "end a SOCKS5 UDP association, or a UDP forward's session, after this long without a datagram either way; 0 for never")
	fs.Var(&p.allowFrom, "allow-from", "CIDR (or IP address): only clients from these addresses may use the SOCKS5 and HTTP proxies, the DNS server and the forwards; others are disconnected (DNS: REFUSED). Comma-separated, or repeat the flag. Default: every client that can reach the listeners")
	fs.BoolVar(&p.allowUnauthenticatedRemote, "allow-unauthenticated-remote", false, "let the SOCKS5 or HTTP proxy listen on an address other than loopback without a user and password (without it, warren refuses to start so)")
	p.dnsCacheSize = dnsserver.DefaultCacheBytes
	fs.IntVar(&p.dnsCacheEntries, "dns-cache-entries", dnsserver.DefaultCacheEntries, "most answers the DNS cache holds; 0 turns the cache off")
	fs.Var(&p.dnsCacheSize, "dns-cache-size", "most memory the DNS cache's answers take: bytes, or with KiB, MiB or GiB; 0 turns the cache off")
	fs.IntVar(&p.dnsMaxInFlight, "dns-max-inflight", dnsserver.DefaultMaxInFlight, "most DNS queries asked of the tunnel's servers at once; a query beyond it is answered SERVFAIL at once")
}

// limits checks the limit flags and puts them into o.
func (p *proxyFlags) limits(o *appOptions) error {
	switch {
	case p.maxFlows < 0:
		return fmt.Errorf("--max-flows: %d is negative; give 0 for no limit", p.maxFlows)
	case p.maxFlowsPerClient < 0:
		return fmt.Errorf("--max-flows-per-client: %d is negative; give 0 for no limit", p.maxFlowsPerClient)
	case p.handshakeTimeout <= 0:
		return fmt.Errorf("--handshake-timeout: %v is not a positive duration", p.handshakeTimeout)
	case p.udpIdleTimeout < 0:
		return fmt.Errorf("--udp-idle-timeout: %v is negative; give 0 for never", p.udpIdleTimeout)
	case p.dnsCacheEntries < 0:
		return fmt.Errorf("--dns-cache-entries: %d is negative; give 0 to turn the cache off", p.dnsCacheEntries)
	case p.dnsMaxInFlight < 1:
		return fmt.Errorf("--dns-max-inflight: %d is less than 1", p.dnsMaxInFlight)
	}
	// 0 on the command line means none; in the packages, a negative value.
	orNone := func(n int) int {
		if n == 0 {
			return -1
		}
		return n
	}
	o.limits = limitOptions{
		maxFlows:                   orNone(p.maxFlows),
		maxFlowsPerClient:          orNone(p.maxFlowsPerClient),
		handshakeTimeout:           p.handshakeTimeout,
		udpIdleTimeout:             p.udpIdleTimeout,
		allowFrom:                  p.allowFrom,
		allowUnauthenticatedRemote: p.allowUnauthenticatedRemote,
		dnsCacheEntries:            orNone(p.dnsCacheEntries),
		dnsCacheBytes:              orNone(int(p.dnsCacheSize)),
		dnsMaxInFlight:             p.dnsMaxInFlight,
	}
	if p.udpIdleTimeout == 0 {
		o.limits.udpIdleTimeout = -1
	}
	return nil
}

// prefixList is --allow-from: CIDR prefixes, or IP addresses (a prefix of
// one address), comma-separated or repeated.
type prefixList []netip.Prefix

func (l *prefixList) String() string { return joinStrings(*l) }

func (l *prefixList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if a, err := netip.ParseAddr(f); err == nil && a.Zone() == "" {
			*l = append(*l, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return fmt.Errorf("%q is not a CIDR prefix (e.g. 10.0.0.0/8) or an IP address", f)
		}
		*l = append(*l, p.Masked())
	}
	return nil
}

// byteSize is a flag holding a number of bytes: a number, or one with KiB,
// MiB or GiB after it.
type byteSize int

// sizeUnits are byteSize's units, largest first.
var sizeUnits = []struct {
	suffix string
	n      int
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}

func (b *byteSize) String() string {
	for _, u := range sizeUnits {
		if *b != 0 && int(*b)%u.n == 0 {
			return strconv.Itoa(int(*b)/u.n) + u.suffix
		}
	}
	return strconv.Itoa(int(*b))
}

func (b *byteSize) Set(v string) error {
	num, mult := strings.TrimSpace(v), 1
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.n
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > math.MaxInt32/mult {
		return fmt.Errorf("%q is not a size: bytes, or a number with KiB, MiB or GiB (e.g. 4MiB)", v)
	}
	*b = byteSize(n * mult)
	return nil
}

// given returns the names of the flags set on the command line or by their
// environment variables.
func given(fs *flag.FlagSet) map[string]bool {
	m := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}

// frontends fills in o's front-ends from the flags and, for a wireproxy
// file, from its sections. set is what given returned.
//
// A wireproxy file's [Socks5] and [http] sections stand in for --socks5 and
// --http when those flags are not given, so that the file alone gives the
// listeners wireproxy gave (and no SOCKS5 proxy on 1080 it did not ask
// for); its tunnels are added to --forward's and --expose's. Only the
// first config's sections count: the others are failover configs.
func (p *proxyFlags) frontends(o *appOptions, set map[string]bool, first *config.Config, getenv func(string) string) error {
	socksCreds, err := readCredentials("socks5", p.socks5User, p.socks5PasswordFile, getenv)
	if err != nil {
		return err
	}
	httpCreds, err := readCredentials("http", p.httpUser, p.httpPasswordFile, getenv)
	if err != nil {
		return err
	}
	var fe config.Frontends
	if first != nil && first.Wireproxy {
		fe = first.Frontends
	}
	var path string
	if first != nil {
		path = first.Path
	}
	o.socks5 = proxyListeners(p.socks5, set["socks5"] || first == nil || !first.Wireproxy, fe.SOCKS5, socksCreds, "[Socks5]", path)
	o.http = proxyListeners(p.http, set["http"] || first == nil || !first.Wireproxy, fe.HTTP, httpCreds, "[http]", path)
	if p.dns != off && p.dns != "" {
		o.dns, o.dnsSoft = p.dns, !set["dns"]
	}
	o.forwards = append([]forwardSpec(nil), p.forwards...)
	for _, f := range fe.Forwards {
		o.forwards = append(o.forwards, forwardSpec{local: f.BindAddress, target: f.Target, tcp: true})
	}
	o.exposes = append([]exposeSpec(nil), p.exposes...)
	for _, e := range fe.Exposes {
		o.exposes = append(o.exposes, exposeSpec{port: e.ListenPort, target: e.Target})
	}
	o.probes, o.hold = p.probes, p.hold
	return p.limits(o)
}

// proxyListeners returns the listeners of one kind of proxy: the flag's if
// it rules, else the file's (those of section in the file at path). creds,
// from the flags, override the file's.
func proxyListeners(flagAddr string, flagRules bool, fromFile []config.ProxyListener, creds *proxy.Credentials, section, path string) []listenSpec {
	if flagRules {
		if flagAddr == off || flagAddr == "" {
			return nil
		}
		return []listenSpec{{addr: flagAddr, creds: creds}}
	}
	var specs []listenSpec
	for _, l := range fromFile {
		s := listenSpec{addr: l.BindAddress, creds: creds, section: fmt.Sprintf("the %s section of %s (line %d)", section, path, l.Line)}
		if s.creds == nil && l.Username != "" {
			s.creds = &proxy.Credentials{User: l.Username, Password: string(l.Password)}
		}
		specs = append(specs, s)
	}
	return specs
}

// readCredentials reads a proxy's user and password: the password from
// file (--<proxy>-password-file, or WARREN_<PROXY>_PASSWORD_FILE), less one
// trailing newline, or else from WARREN_<PROXY>_PASSWORD; never from a
// flag's value (which ps would show). Both is an error. It returns nil when
// no user is set.
func readCredentials(proxyName, user, file string, getenv func(string) string) (*proxy.Credentials, error) {
	userFlag, fileFlag := "--"+proxyName+"-user", "--"+proxyName+"-password-file"
	envVar := envName(proxyName + "-password")
	password := getenv(envVar)
	if file != "" {
		if password != "" {
			return nil, fmt.Errorf("%s and %s (%s) are both set; give one", envVar, fileFlag, envVar+fileSuffix)
		}
		var err error
		if password, err = readSecretFile(file); err != nil {
			return nil, fmt.Errorf("%s: %v", fileFlag, err)
		}
		if strings.ContainsAny(password, "\r\n") {
			return nil, fmt.Errorf("%s: %s holds more than one line; the password is its only line", fileFlag, file)
		}
	}
	switch {
	case user == "" && (file != "" || password != ""):
		return nil, fmt.Errorf("a %s password is set (%s or %s) but no user: give %s too", proxyName, fileFlag, envVar, userFlag)
	case user == "":
		return nil, nil
	case password == "":
		return nil, fmt.Errorf("%s needs a password: put it in a file named by %s, or in %s", userFlag, fileFlag, envVar)
	}
	return &proxy.Credentials{User: user, Password: password}, nil
}

// forwardList is --forward, repeatable (or comma-separated in its variable).
type forwardList []forwardSpec

func (l *forwardList) String() string {
	s := make([]string, len(*l))
	for i, f := range *l {
		s[i] = f.local + "=" + f.target
	}
	return strings.Join(s, ",")
}

func (l *forwardList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		f := forwardSpec{tcp: true, udp: true}
		if rest, ok := strings.CutPrefix(item, "tcp:"); ok {
			item, f.udp = rest, false
		} else if rest, ok := strings.CutPrefix(item, "udp:"); ok {
			item, f.tcp = rest, false
		}
		local, target, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q is not LOCAL_ADDR=TUNNEL_ADDR", item)
		}
		if err := checkHostPort(local, true); err != nil {
			return fmt.Errorf("%q: LOCAL_ADDR %v", item, err)
		}
		if err := checkHostPort(target, false); err != nil {
			return fmt.Errorf("%q: TUNNEL_ADDR %v", item, err)
		}
		f.local, f.target = local, target
		*l = append(*l, f)
	}
	return nil
}

// exposeList is --expose, repeatable (or comma-separated in its variable).
type exposeList []exposeSpec

func (l *exposeList) String() string {
	s := make([]string, len(*l))
	for i, e := range *l {
		s[i] = fmt.Sprintf("%d=%s", e.port, e.target)
	}
	return strings.Join(s, ",")
}

func (l *exposeList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		port, target, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q is not TUNNEL_PORT=LOCAL_ADDR", item)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("%q: TUNNEL_PORT %q is not a port from 1 to 65535", item, port)
		}
		if err := checkHostPort(target, false); err != nil {
			return fmt.Errorf("%q: LOCAL_ADDR %v", item, err)
		}
		*l = append(*l, exposeSpec{port: uint16(n), target: target})
	}
	return nil
}

// checkHostPort checks host:port; a listen address may leave the host
// empty (every address) but not the port.
func checkHostPort(s string, listen bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("%q: %q is not a port from 1 to 65535", s, port)
	}
	if host == "" && !listen {
		return fmt.Errorf("%q has no host", s)
	}
	return nil
}

// addrList is a flag holding IP addresses, comma-separated or repeated.
type addrList []netip.Addr

func (l *addrList) String() string { return joinStrings(*l) }

func (l *addrList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%q is not an IP address", f)
		}
		*l = append(*l, a)
	}
	return nil
}
