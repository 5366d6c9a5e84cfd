package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"
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

// proxyFlags are the proxy's flags, shared by up and demo.
type proxyFlags struct {
	socks5 string
	probes addrList
	hold   time.Duration
}

func (p *proxyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.socks5, "socks5", "127.0.0.1:1080", "listen address of the SOCKS5 proxy")
	fs.Var(&p.probes, "probe", "IP address inside the tunnel that answers ping, used to verify the tunnel besides the config's DNS servers (comma-separated, or repeat the flag)")
	fs.DurationVar(&p.hold, "hold", 0, "while connecting, how long a new connection waits for the tunnel before it is refused (e.g. 10s); 0 refuses at once")
}

// addrList is a flag holding IP addresses, comma-separated or repeated.
type addrList []netip.Addr

func (l *addrList) String() string {
	s := make([]string, len(*l))
	for i, a := range *l {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

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
