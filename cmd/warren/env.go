package main

// This file holds where warren up and warren check get their WireGuard
// config — files (-c), the text of one in WARREN_WG_CONFIG, the path of one
// in WARREN_WG_CONFIG_FILE, one variable per key (WARREN_PRIVATE_KEY, …),
// or the default file — and the rule that a secret in a variable X may
// instead be in the file that X_FILE names, as Docker and Kubernetes
// secrets are.

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/warren-vpn/warren/config"
)

// defaultConfigPath is the config read when no other is given: where the
// container image and the systemd units put it.
const defaultConfigPath = "/etc/warren/wg0.conf"

// defaultConfig is the path of the default config; tests point it
// elsewhere.
var defaultConfig = defaultConfigPath

const (
	// envWGConfig holds a whole config file's text.
	envWGConfig = "WARREN_WG_CONFIG"
	// envAPIToken holds the API's bearer token (or, with fileSuffix, the
	// path of a file that holds it: --api-token-file's variable).
	envAPIToken = "WARREN_API_TOKEN"
	// fileSuffix makes a secret's variable into the one that names a file
	// holding the secret: WARREN_PRIVATE_KEY_FILE.
	fileSuffix = "_FILE"
	// envVarsName is what messages and logs call a config made of the
	// individual variables: its Config.Path.
	envVarsName = "WARREN_* variables"
)

// wgVar is a variable that stands for one key of a wg-quick file: together
// they make a config with one peer.
type wgVar struct {
	name     string // WARREN_ADDRESS
	key      string // the key it stands for: Address
	peer     bool   // the key is in [Peer], not [Interface]
	secret   bool   // it may be given as name_FILE instead
	required bool
	def      string // the value when it is unset, or ""
	help     string // for warren up -h
}

// wgVars are the config's variables, interface first, in the order they
// are written out.
var wgVars = []wgVar{
	{name: "WARREN_PRIVATE_KEY", key: "PrivateKey", secret: true, required: true, help: "[Interface] PrivateKey (required)"},
	{name: "WARREN_ADDRESS", key: "Address", required: true, help: "Address, comma-separated (required)"},
	{name: "WARREN_DNS_SERVERS", key: "DNS", help: "DNS, comma-separated (WARREN_DNS is --dns)"},
	{name: "WARREN_MTU", key: "MTU", help: fmt.Sprintf("MTU (default %d)", config.DefaultMTU)},
	{name: "WARREN_LISTEN_PORT", key: "ListenPort", help: "ListenPort (default: any free port)"},
	{name: "WARREN_PEER_PUBLIC_KEY", key: "PublicKey", peer: true, required: true, help: "[Peer] PublicKey (required)"},
	{name: "WARREN_PEER_PRESHARED_KEY", key: "PresharedKey", peer: true, secret: true, help: "PresharedKey"},
	{name: "WARREN_PEER_ENDPOINT", key: "Endpoint", peer: true, required: true, help: "Endpoint, host:port (required)"},
	{name: "WARREN_PEER_ALLOWED_IPS", key: "AllowedIPs", peer: true, def: "0.0.0.0/0, ::/0", help: "AllowedIPs (default 0.0.0.0/0, ::/0)"},
	{name: "WARREN_PEER_PERSISTENT_KEEPALIVE", key: "PersistentKeepalive", peer: true, help: "PersistentKeepalive, seconds or off (default off)"},
}

// secretVars are the variables that hold a secret, each of which may be
// given as name_FILE instead.
var secretVars = []string{"WARREN_PRIVATE_KEY", "WARREN_PEER_PRESHARED_KEY", envWGConfig, "WARREN_SOCKS5_PASSWORD", "WARREN_HTTP_PASSWORD", envAPIToken}

// sourceKind is where a config comes from.
type sourceKind uint8

const (
	fromFiles sourceKind = iota // -c/--config (WARREN_CONFIG), WARREN_WG_CONFIG_FILE, or the default file
	fromText                    // WARREN_WG_CONFIG
	fromVars                    // one variable per key
)

// wgSource is where warren up and warren check read their WireGuard
// configs from. Each read reads its files again, those that *_FILE
// variables name included, so that a reload picks up a rotated secret.
type wgSource struct {
	kind  sourceKind
	paths []string // fromFiles
	// via says how fromFiles's paths were given: "--config",
	// WARREN_WG_CONFIG_FILE, or "default".
	via    string
	getenv func(string) string
}

// configSource finds where the WireGuard config is given: -c/--config
// (paths, which WARREN_CONFIG may have set), WARREN_WG_CONFIG,
// WARREN_WG_CONFIG_FILE or the individual variables; with none of these,
// the default file if it exists. More than one is an error that names
// them, and so is none.
func configSource(paths []string, getenv func(string) string) (*wgSource, error) {
	var given []string
	var src *wgSource
	if len(paths) > 0 {
		given = append(given, "-c/--config (or WARREN_CONFIG)")
		src = &wgSource{kind: fromFiles, paths: paths, via: "--config"}
	}
	text, file := getenv(envWGConfig), getenv(envWGConfig+fileSuffix)
	switch {
	case text != "" && file != "":
		return nil, bothSet(envWGConfig)
	case text != "":
		given = append(given, envWGConfig)
		src = &wgSource{kind: fromText}
	case file != "":
		given = append(given, envWGConfig+fileSuffix)
		src = &wgSource{kind: fromFiles, paths: []string{file}, via: envWGConfig + fileSuffix}
	}
	if vars := varsSet(getenv); len(vars) > 0 {
		given = append(given, "the config variables "+strings.Join(vars, ", "))
		src = &wgSource{kind: fromVars}
	}
	switch {
	case len(given) > 1:
		return nil, fmt.Errorf("the WireGuard config is given more than one way: by %s; give it one way", strings.Join(given, " and by "))
	case src != nil:
		src.getenv = getenv
		return src, nil
	}
	if _, err := os.Stat(defaultConfig); errors.Is(err, fs.ErrNotExist) {
		return nil, errNoConfig()
	}
	return &wgSource{kind: fromFiles, paths: []string{defaultConfig}, via: "default", getenv: getenv}, nil
}

// errNoConfig lists every way to give a config.
func errNoConfig() error {
	var required []string
	for _, v := range wgVars {
		if v.required {
			required = append(required, v.name)
		}
	}
	return fmt.Errorf("no config: give -c FILE or set WARREN_CONFIG (config files), %s (a config's text), %s (a config file's path), "+
		"or the config's variables (%s, and the optional ones: see warren up -h); or put the config at %s",
		envWGConfig, envWGConfig+fileSuffix, strings.Join(required, ", "), defaultConfig)
}

// varsSet returns the names of the config's variables that are set.
func varsSet(getenv func(string) string) []string {
	var set []string
	for _, v := range wgVars {
		if getenv(v.name) != "" {
			set = append(set, v.name)
		}
		if v.secret && getenv(v.name+fileSuffix) != "" {
			set = append(set, v.name+fileSuffix)
		}
	}
	return set
}

// String says where the config comes from, for the log.
func (s *wgSource) String() string {
	switch s.kind {
	case fromText:
		return envWGConfig
	case fromVars:
		return "variables " + strings.Join(varsSet(s.getenv), ", ")
	}
	list := strings.Join(s.paths, ", ")
	switch {
	case s.via == envWGConfig+fileSuffix:
		return s.via + " " + list
	case s.via == "default":
		return "file " + list + " (the default)"
	case len(s.paths) > 1:
		return "files " + list
	}
	return "file " + list
}

// read reads the configs. It returns those that are valid and every
// warning, and, if any config is invalid, an error that lists every
// problem.
func (s *wgSource) read() ([]*config.Config, []*config.Issue, error) {
	var configs []*config.Config
	var warnings []*config.Issue
	var errs []error
	add := func(cfg *config.Config, warns []*config.Issue, err error) {
		warnings = append(warnings, warns...)
		if err != nil {
			errs = append(errs, err)
			return
		}
		configs = append(configs, cfg)
	}
	switch s.kind {
	case fromText:
		add(config.Parse(envWGConfig, []byte(s.getenv(envWGConfig))))
	case fromVars:
		add(parseVars(s.getenv))
	default:
		for _, path := range s.paths {
			add(config.Load(path))
		}
	}
	if len(errs) > 0 {
		return configs, warnings, fmt.Errorf("invalid config:\n%v", errors.Join(errs...))
	}
	return configs, warnings, nil
}

// load reads the configs, logging their warnings: warren up's, at start
// and at every reload.
func (s *wgSource) load(log *slog.Logger) ([]*config.Config, error) {
	configs, warnings, err := s.read()
	for _, w := range warnings {
		log.Warn("config: " + w.Error())
	}
	if err != nil {
		return nil, err
	}
	return configs, nil
}

// loadConfigs reads and validates config files, logging their warnings.
// Every file is read, so that all their errors are reported at once.
func loadConfigs(paths []string, log *slog.Logger) ([]*config.Config, error) {
	return (&wgSource{kind: fromFiles, paths: paths, via: "--config"}).load(log)
}

// parseVars makes a config of the individual variables. It writes them out
// as a wg-quick file and parses that, so that they are checked exactly as
// a file's keys are; each problem is then told against the variable its
// line came from, without the value (a variable may hold a secret).
func parseVars(getenv func(string) string) (*config.Config, []*config.Issue, error) {
	type setting struct {
		wgVar
		from, value string // the variable the value came from (name or name_FILE)
	}
	var settings []setting
	var errs []error
	for _, v := range wgVars {
		s := setting{wgVar: v, from: v.name, value: getenv(v.name)}
		if v.secret {
			var err error
			if s.value, s.from, err = secretEnv(getenv, v.name); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		switch {
		case s.value == "" && v.required:
			errs = append(errs, fmt.Errorf("%s: not set; a config from variables needs %s", v.name, requiredVars()))
			continue
		case s.value == "" && v.def == "":
			continue
		case s.value == "":
			s.value = v.def
		case strings.ContainsAny(s.value, "\r\n#"):
			errs = append(errs, fmt.Errorf("%s: holds a line break or '#', which no valid value has", s.from))
			continue
		}
		settings = append(settings, s)
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}

	// The file, and where each of its lines came from. A section's header
	// stands for its first key's variable (the private key's, the public
	// key's), to which the parser's messages about a whole section belong.
	var b strings.Builder
	from := map[int]setting{}
	headers := map[int]bool{}
	line, section := 0, ""
	for _, s := range settings {
		header := "[Interface]"
		if s.peer {
			header = "[Peer]"
		}
		if header != section {
			line++
			b.WriteString(header + "\n")
			from[line], section, headers[line] = s, header, true
		}
		line++
		fmt.Fprintf(&b, "%s = %s\n", s.key, s.value)
		from[line] = s
	}
	tell := func(is *config.Issue) *config.Issue {
		s, ok := from[is.Line]
		if !ok {
			return &config.Issue{File: envVarsName, Msg: is.Msg}
		}
		return &config.Issue{File: s.from, Msg: redact(is.Msg, s.value)}
	}
	cfg, warns, err := config.Parse(envVarsName, []byte(b.String()))
	for i, w := range warns {
		warns[i] = tell(w)
	}
	var issues config.Errors
	if !errors.As(err, &issues) {
		return cfg, warns, err
	}
	// The parser also reports what follows from a bad value: no PrivateKey
	// after a bad one, no Endpoint after a bad one. Leave those out when
	// the value's own error is there.
	bad := map[string]bool{}
	for _, is := range issues {
		if is.Line != 0 && !headers[is.Line] {
			bad[from[is.Line].from] = true
		}
	}
	for _, is := range issues {
		if is.Line == 0 && len(bad) > 0 || headers[is.Line] && bad[from[is.Line].from] {
			continue
		}
		errs = append(errs, tell(is))
	}
	return nil, warns, errors.Join(errs...)
}

// requiredVars names the variables a config from variables needs.
func requiredVars() string {
	var names []string
	for _, v := range wgVars {
		if !v.required {
			continue
		}
		if v.secret {
			names = append(names, v.name+" (or "+v.name+fileSuffix+")")
		} else {
			names = append(names, v.name)
		}
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// quoted matches a string quoted by strconv.Quote in a message.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// redact takes a variable's value out of a message about it: the config
// parser quotes a value, an item of a list or an endpoint's host in some
// of its messages, and a variable's message must show none of them.
func redact(msg, value string) string {
	value = strings.TrimSpace(value)
	host, _, _ := net.SplitHostPort(value)
	msg = quoted.ReplaceAllStringFunc(msg, func(q string) string {
		s, err := strconv.Unquote(q)
		switch {
		case err != nil || s == "":
			return q
		case s == value:
			return "its value"
		case s == host:
			return "its host"
		}
		for _, item := range strings.Split(value, ",") {
			if strings.TrimSpace(item) == s {
				return "an item of its value"
			}
		}
		return q
	})
	if len(value) >= 8 && strings.Contains(msg, value) {
		return "invalid value (not shown)" // a message this function does not know
	}
	return msg
}

// secretEnv returns the secret in the variable name, or in the file that
// name_FILE names: the file's content less one trailing newline, as Docker
// and Kubernetes secrets are written. from is the variable it came from,
// "" when neither is set. Both set is an error, and so is an empty file.
func secretEnv(getenv func(string) string, name string) (value, from string, err error) {
	value, file := getenv(name), getenv(name+fileSuffix)
	switch {
	case value != "" && file != "":
		return "", "", bothSet(name)
	case value != "":
		return value, name, nil
	case file == "":
		return "", "", nil
	}
	from = name + fileSuffix
	if value, err = readSecretFile(file); err != nil {
		return "", "", fmt.Errorf("%s: %v", from, err)
	}
	if value == "" {
		return "", "", fmt.Errorf("%s: %s is empty", from, file)
	}
	return value, from, nil
}

// bothSet is the error for a secret given both in its variable and in a
// file.
func bothSet(name string) error {
	return fmt.Errorf("%s and %s are both set; give one", name, name+fileSuffix)
}

// readSecretFile returns the content of a file that holds a secret, less
// one trailing newline. Its errors name the file, never its content.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(string(b), "\n")
	return strings.TrimSuffix(s, "\r"), nil
}

// apiToken returns the API's bearer token: the content of the file
// --api-token-file (WARREN_API_TOKEN_FILE) names, or WARREN_API_TOKEN's
// value, or "" if neither is set.
func apiToken(file string, getenv func(string) string) (string, error) {
	token := getenv(envAPIToken)
	switch {
	case token != "" && file != "":
		return "", fmt.Errorf("%s and --api-token-file (%s) are both set; give one", envAPIToken, envAPIToken+fileSuffix)
	case token != "":
		if strings.ContainsAny(token, " \t\r\n") {
			return "", fmt.Errorf("%s: the token cannot hold spaces or line breaks", envAPIToken)
		}
		return token, nil
	case file == "":
		return "", nil
	}
	token, err := readSecretFile(file)
	switch {
	case err != nil:
		return "", fmt.Errorf("--api-token-file: %v", err)
	case token == "":
		return "", fmt.Errorf("--api-token-file: %s is empty", file)
	case strings.ContainsAny(token, " \t\r\n"):
		return "", fmt.Errorf("--api-token-file: %s must hold the token on its only line, with no spaces", file)
	}
	return token, nil
}

// envHelp is the part of warren up's and warren check's usage about the
// environment.
func envHelp() string {
	var b strings.Builder
	fmt.Fprintf(&b, `Environment:
  Every flag can also be set with a variable, WARREN_ and the flag's name in
  capitals with '-' as '_': --socks5 is WARREN_SOCKS5, --config is
  WARREN_CONFIG (comma-separated for a list). A flag on the command line wins
  over its variable.

  The WireGuard config comes from one of these (more than one is an error):
    -c FILE, --config FILE (WARREN_CONFIG)  wg-quick or wireproxy files
    %-38s  the whole config file's text
    %-38s  the path of a config file
    one variable per key of a wg-quick file, for a config with one peer:
`, envWGConfig, envWGConfig+fileSuffix)
	for _, v := range wgVars {
		fmt.Fprintf(&b, "      %-33s %s\n", v.name, v.help)
	}
	fmt.Fprintf(&b, `  With none of these, it is read from %s if that exists.

  Secrets may be in files, as Docker and Kubernetes secrets are: instead of
  X, give X_FILE, the path of a file that holds it (its content, less one
  trailing newline). Setting both X and X_FILE is an error.
`, defaultConfigPath)
	for _, name := range secretVars {
		fmt.Fprintf(&b, "    %-27s or %s\n", name, name+fileSuffix)
	}
	return b.String()
}

// usageWithEnv returns a usage function for a command that reads the
// config: its synopsis, its flags, and envHelp.
func usageWithEnv(fs *flag.FlagSet, synopsis string) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
		fmt.Fprint(w, "\n"+envHelp())
	}
}
