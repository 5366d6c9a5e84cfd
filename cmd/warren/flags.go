package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// envName is the environment variable of a flag: --socks5 is WARREN_SOCKS5.
func envName(flagName string) string {
	return "WARREN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// errUsage is returned for a bad command line, once the reason and the
// usage have been printed.
var errUsage = errors.New("usage")

// parseFlags sets fs's flags from the environment, then from args, so that a
// flag on the command line wins over its variable. Flags listed in aliases
// (short names such as -c) have no variable of their own. A bad variable is
// an error that names it; a bad command line is errUsage.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string, aliases ...string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || slices.Contains(aliases, f.Name) {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s: %v", name, serr)
			}
		}
	})
	if err != nil {
		return err
	}
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
	return nil
}

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

// proxyFlags are the listener flags shared by up and demo.
type proxyFlags struct {
	socks5 string
	probes addrList
}

func (p *proxyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.socks5, "socks5", "127.0.0.1:1080", "listen address of the SOCKS5 proxy")
	fs.Var(&p.probes, "probe", "IP address inside the tunnel that answers ping, used to verify the tunnel besides the config's DNS servers (comma-separated, or repeat the flag)")
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
