package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// MaxFileSize is the largest config file Parse and Load accept.
const MaxFileSize = 1 << 20

// MTU bounds. IPv6 needs at least 1280 (RFC 8200).
const (
	minMTU     = 576
	minMTUIPv6 = 1280
	maxMTU     = 65535
)

// Issue is one problem found in a config: an error, or a warning.
type Issue struct {
	// File is the path of the config as given.
	File string
	// Line is 1-based, or 0 for a problem with the whole file.
	Line int
	// Key is the key as the file spells it, or a section such as "[Peer]",
	// or "" when the problem is not about one key.
	Key string
	// Msg says what is wrong. It never contains a secret (see the package
	// documentation).
	Msg string
}

// Error returns "file:line: Key: message", leaving out what is unknown.
func (i *Issue) Error() string {
	var b strings.Builder
	b.WriteString(i.File)
	if i.Line > 0 {
		fmt.Fprintf(&b, ":%d", i.Line)
	}
	b.WriteString(": ")
	if i.Key != "" {
		b.WriteString(i.Key + ": ")
	}
	b.WriteString(i.Msg)
	return b.String()
}

// Errors is every error found in a config, in line order (problems with the
// whole file last).
type Errors []*Issue

// Error returns one issue per line.
func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, is := range e {
		s[i] = is.Error()
	}
	return strings.Join(s, "\n")
}

// ParseOptions give Parse what a wireproxy file may take from outside
// itself: environment variables (a value written $NAME) and the wg-quick
// file its WGConfig key names. A wg-quick file takes neither. The zero
// value means the process's own environment and file system.
type ParseOptions struct {
	// LookupEnv returns an environment variable's value and whether it is
	// set. nil means os.LookupEnv.
	LookupEnv func(name string) (string, bool)
	// ReadFile returns the contents of the file at path: WGConfig's value,
	// an absolute path or one joined to the wireproxy file's directory.
	// nil means reading it from the file system as Load reads its file,
	// with the same warning when its group or others can read it; a
	// ReadFile of the caller's own gets no such warning.
	ReadFile func(path string) ([]byte, error)
}

// Load reads and parses the config file at path, in either format, as
// ParseOptions{}.Load does.
func Load(path string) (*Config, []*Issue, error) { return ParseOptions{}.Load(path) }

// Load reads and parses the config file at path. Besides Parse's warnings,
// it warns when the file is readable by its group or others and holds a
// secret written out (not taken from the environment).
func (o ParseOptions) Load(path string) (*Config, []*Issue, error) {
	data, perm, err := readConfigFile(path)
	if err != nil {
		return nil, nil, Errors{{File: path, Msg: "cannot read: " + openErrorReason(err)}}
	}
	p := o.parse(path, data)
	p.warnIfReadable(perm)
	return p.result()
}

var errIsDir = errors.New("is a directory, not a config file")

// readConfigFile reads the file at path, up to MaxFileSize+1 bytes (enough
// to tell that it is too large), and returns its permission bits.
func readConfigFile(path string) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if info.IsDir() {
		return nil, 0, errIsDir
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, 0, err
	}
	return data, info.Mode().Perm(), nil
}

// openErrorReason says why a file could not be read, without repeating its
// path (the message names it).
func openErrorReason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch {
	case errors.Is(err, errIsDir):
		return err.Error()
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return err.Error()
}

// warnIfReadable warns, first, when the file's group or others can read
// it and it holds a secret.
func (p *parser) warnIfReadable(perm fs.FileMode) {
	if perm&0o044 == 0 || p.secret == "" {
		return
	}
	w := &Issue{File: p.file, Msg: fmt.Sprintf("readable by group or others (mode %04o), and it holds %s: chmod 600 %s", perm, p.secret, p.file)}
	p.warns = append([]*Issue{w}, p.warns...)
}

// Parse parses a config in wg-quick's or wireproxy's format, as
// ParseOptions{}.Parse does: a wg-quick config is read from data alone, but
// a wireproxy config's $NAME values come from the process's environment and
// its WGConfig file from the file system.
func Parse(name string, data []byte) (*Config, []*Issue, error) {
	return ParseOptions{}.Parse(name, data)
}

// Parse parses a config in wg-quick's or wireproxy's format. name is used
// in messages (and as Config.Path), and a WGConfig path is relative to its
// directory. It returns the config and its warnings, or, if there is any
// error, a nil config and Errors with every error found: the file's, in line
// order, then those of the file WGConfig names.
func (o ParseOptions) Parse(name string, data []byte) (*Config, []*Issue, error) {
	return o.parse(name, data).result()
}

// parse reads a config in either format and, for a wireproxy config with
// WGConfig, the wg-quick file it names.
func (o ParseOptions) parse(name string, data []byte) *parser {
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	p := newParser(name, o)
	p.read(data, true)
	if p.wgConfig != "" {
		p.readWGConfig()
	}
	return p
}

func newParser(name string, o ParseOptions) *parser {
	return &parser{file: name, opts: o, cfg: &Config{Path: name}, seen: make(map[string]int)}
}

// read parses and checks one file. detect says to find out whether it is a
// wireproxy config; otherwise p's format is already set.
func (p *parser) read(data []byte, detect bool) {
	if len(data) > MaxFileSize {
		p.issueAt(0, "", fmt.Sprintf("larger than %d bytes; not a WireGuard config", MaxFileSize))
		return
	}
	lines := splitLines(data)
	if detect && isWireproxy(lines) {
		p.wireproxy, p.frontends, p.cfg.Wireproxy = true, true, true
	}
	p.parse(lines)
	p.validate()
	sortIssues(p.errs)
}

func (p *parser) result() (*Config, []*Issue, error) {
	if len(p.errs) > 0 {
		return nil, p.warns, p.errs
	}
	return p.cfg, p.warns, nil
}

// splitLines splits a file into lines, without a UTF-8 byte order mark.
func splitLines(data []byte) []string {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	return strings.Split(string(data), "\n")
}

// sortIssues sorts issues by line, whole-file issues last.
func sortIssues(issues []*Issue) {
	sort.SliceStable(issues, func(i, j int) bool { return lineOrder(issues[i].Line) < lineOrder(issues[j].Line) })
}

// lineOrder sorts whole-file issues (line 0) after the others.
func lineOrder(line int) int {
	if line == 0 {
		return int(^uint(0) >> 1)
	}
	return line
}

type sectionKind uint8

const (
	noSection sectionKind = iota // before the first section
	inInterface
	inPeer
	inSocks5    // wireproxy's [Socks5]
	inHTTP      // wireproxy's [http]
	inForward   // wireproxy's [TCPClientTunnel]
	inExpose    // wireproxy's [TCPServerTunnel]
	skipSection // a duplicate or unknown section: its keys are not read
)

// parser holds the state of one file's parse.
type parser struct {
	file  string
	opts  ParseOptions // LookupEnv is set
	cfg   *Config
	errs  Errors
	warns []*Issue // problems that do not stop the config from being used

	// wireproxy is set for a wireproxy config and for the wg-quick file
	// its WGConfig names, which wireproxy reads the same way: go-ini's
	// comments and quotes, $NAME values, a default AllowedIPs.
	wireproxy bool
	// frontends is set for a wireproxy config itself: it may have keys
	// before its first section, and listener sections.
	frontends bool

	section       sectionKind
	interfaceLine int            // line of [Interface], 0 if none yet
	seen          map[string]int // single-valued keys of the current section -> line
	mtuLine       int
	lst           *listener // the listener section being read, or nil

	wgConfig     string // the file WGConfig names, "" if none (or if its value is bad)
	wgConfigLine int    // the line of WGConfig, 0 if none
	wgConfigKey  string
	wgConfigFrom string // the environment variable it came from, or ""

	// secret says what secret the file holds written out, as in "a private
	// key", or is "" if none.
	secret string

	// line and key are those of the key being read, for messages; from is
	// the environment variable its value came from, or "".
	line int
	key  string
	from string
}

func (p *parser) errorf(format string, args ...any) {
	p.errs = append(p.errs, &Issue{File: p.file, Line: p.line, Key: p.key, Msg: p.fromEnv(fmt.Sprintf(format, args...))})
}

func (p *parser) warnf(format string, args ...any) {
	p.warns = append(p.warns, &Issue{File: p.file, Line: p.line, Key: p.key, Msg: p.fromEnv(fmt.Sprintf(format, args...))})
}

// fromEnv adds to a message about a value from the environment where the
// value came from, unless the message says so already.
func (p *parser) fromEnv(msg string) string {
	if p.from == "" || strings.Contains(msg, "$"+p.from) {
		return msg
	}
	return msg + " (the value came from $" + p.from + ")"
}

// quote returns s quoted for a message. A value from the environment is not
// shown, since the variable may hold a secret (a mistyped name can pick the
// wrong one): its name stands in for it.
func (p *parser) quote(s string) string {
	if p.from != "" {
		return "$" + p.from + "'s value"
	}
	return strconv.Quote(s)
}

// issueAt records an error about a line other than the current one.
func (p *parser) issueAt(line int, key, msg string) {
	p.errs = append(p.errs, &Issue{File: p.file, Line: line, Key: key, Msg: msg})
}

// lineKind is what one line of a config is.
type lineKind uint8

const (
	blankLine  lineKind = iota // or a comment
	headerLine                 // text is the header, "[Name]"
	keyLine                    // text = value
	badLine
)

// lexWGQuick reads one line as wg-quick does: '#' starts a comment.
func lexWGQuick(raw string) (kind lineKind, text, value, msg string) {
	line, _, _ := strings.Cut(raw, "#")
	line = strings.TrimSpace(line)
	switch {
	case line == "":
		return blankLine, "", "", ""
	case strings.HasPrefix(line, "["):
		return headerLine, line, "", ""
	}
	key, value, ok := strings.Cut(line, "=")
	key, value = strings.TrimSpace(key), strings.TrimSpace(value)
	if !ok || key == "" {
		return badLine, "", "", ""
	}
	return keyLine, key, value, ""
}

func (p *parser) parse(lines []string) {
	lex := lexWGQuick
	if p.wireproxy {
		lex = lexINI
	}
	for i, raw := range lines {
		p.line, p.key, p.from = i+1, "", ""
		kind, text, value, msg := lex(raw)
		switch kind {
		case headerLine:
			p.startSection(text)
		case keyLine:
			p.key = text
			if msg != "" {
				p.errorf("%s", msg)
				continue
			}
			p.setKey(text, value)
		case badLine:
			p.errorf("not a section header or key = value")
		}
	}
	p.line, p.key, p.from = 0, "", ""
	p.endSection()
}

// sectionName returns the name in a section header, "[ Name ]", and false
// if the header has no closing bracket.
func sectionName(header string) (string, bool) {
	name, ok := strings.CutSuffix(header, "]")
	return strings.TrimSpace(strings.TrimPrefix(name, "[")), ok
}

func (p *parser) startSection(line string) {
	p.endSection()
	name, ok := sectionName(line)
	lower := strings.ToLower(name)
	p.key = line
	p.seen = make(map[string]int)
	p.section = skipSection
	switch {
	case !ok:
		p.errorf("not a section header: missing ']'")
	case (lower == "interface" || lower == "peer") && p.wgConfigLine != 0:
		p.errorf("the interface and peers come from the file WGConfig names (line %d); a wireproxy config has them there or here, not both", p.wgConfigLine)
	case lower == "interface":
		if p.interfaceLine != 0 {
			p.errorf("a second [Interface] section (the first is on line %d); a config has one", p.interfaceLine)
			return
		}
		p.interfaceLine = p.line
		p.section = inInterface
	case lower == "peer":
		p.cfg.Peers = append(p.cfg.Peers, Peer{Line: p.line})
		p.section = inPeer
	case p.frontends:
		p.startWireproxySection(lower)
	case p.wireproxy && wireproxySections[lower] != "":
		p.errorf("unknown section in the file a WGConfig key names, which has [Interface] and [Peer] sections; %s goes in the wireproxy config", wireproxySections[lower])
	default:
		p.errorf("unknown section; a wg-quick config has [Interface] and [Peer] sections")
	}
}

// A key is read by a setter, which returns what is wrong with the value, or
// "". Single-valued keys may appear once per section; the others are lists,
// which accumulate over lines.
type keySpec struct {
	single bool
	set    func(p *parser, value string) string
}

var interfaceKeys = map[string]keySpec{
	"privatekey": {true, func(p *parser, v string) string { return parseKey(v, (*[KeyLen]byte)(&p.cfg.Interface.PrivateKey)) }},
	"address":    {false, (*parser).setAddress},
	"dns":        {false, (*parser).setDNS},
	"mtu":        {true, (*parser).setMTU},
	"listenport": {true, (*parser).setListenPort},
}

var peerKeys = map[string]keySpec{
	"publickey":           {true, func(p *parser, v string) string { return parseKey(v, (*[KeyLen]byte)(&p.peer().PublicKey)) }},
	"presharedkey":        {true, func(p *parser, v string) string { return parseKey(v, (*[KeyLen]byte)(&p.peer().PresharedKey)) }},
	"endpoint":            {true, (*parser).setEndpoint},
	"allowedips":          {false, (*parser).setAllowedIPs},
	"persistentkeepalive": {true, (*parser).setKeepalive},
}

// sectionKeys are the keys of each kind of section, and what an unknown
// key's message says.
var sectionKeys = map[sectionKind]struct {
	keys    map[string]keySpec
	unknown string
}{
	noSection:   {topLevelKeys, "unknown key before the first section; a wireproxy config has WGConfig, CheckAlive and CheckAliveInterval there"},
	inInterface: {interfaceKeys, "unknown key in [Interface]"},
	inPeer:      {peerKeys, "unknown key in [Peer]"},
	inSocks5:    {proxyKeys, "unknown key in [Socks5], which has BindAddress, Username and Password"},
	inHTTP:      {proxyKeys, "unknown key in [http], which has BindAddress, Username and Password"},
	inForward:   {forwardKeys, "unknown key in [TCPClientTunnel], which has BindAddress and Target"},
	inExpose:    {exposeKeys, "unknown key in [TCPServerTunnel], which has ListenPort and Target"},
}

// ignoredKeys are wg-quick's and wg's [Interface] keys that mean nothing to
// warren, with their usual spelling.
var ignoredKeys = map[string]string{
	"table":      "Table",
	"preup":      "PreUp",
	"postup":     "PostUp",
	"predown":    "PreDown",
	"postdown":   "PostDown",
	"saveconfig": "SaveConfig",
	"fwmark":     "FwMark",
}

// secretKeys are the keys whose values are secret, and what the permission
// warning calls them.
var secretKeys = map[string]string{
	"privatekey":   "a private key",
	"presharedkey": "a preshared key",
	"password":     "a proxy password",
}

func (p *parser) setKey(key, value string) {
	lower := strings.ToLower(key)
	switch {
	case p.section == skipSection:
		return // the section's header has been reported
	case p.section == noSection && !p.frontends:
		p.errorf("outside a section; keys go under [Interface] or [Peer]")
		return
	case p.section == inInterface && ignoredKeys[lower] != "":
		p.warnf("ignored: %s has no meaning for warren", ignoredKeys[lower])
		return
	case (p.section == inInterface || p.section == noSection) && p.wireproxy && checkAliveKeys[lower] != "":
		p.warnf("ignored: warren's own liveness monitor replaces wireproxy's %s", checkAliveKeys[lower])
		return
	}
	spec, known := sectionKeys[p.section].keys[lower]
	if !known {
		p.errorf("%s", sectionKeys[p.section].unknown)
		return
	}
	if lower == "wgconfig" && p.wgConfigLine == 0 {
		// Even with a bad value, the interface and peers are not inline.
		p.wgConfigLine, p.wgConfigKey = p.line, key
	}
	if value == "" {
		p.errorf("no value")
		return
	}
	if spec.single {
		if first, ok := p.seen[lower]; ok {
			p.errorf("given twice in one section (first on line %d)", first)
			return
		}
		p.seen[lower] = p.line
	}
	if p.wireproxy {
		v, from, msg := p.expand(value)
		if msg != "" {
			p.errorf("%s", msg)
			return
		}
		value, p.from = v, from
		if value == "" {
			p.errorf("no value")
			return
		}
	}
	if what := secretKeys[lower]; what != "" && p.from == "" && p.secret == "" {
		p.secret = what
	}
	if msg := spec.set(p, value); msg != "" {
		p.errorf("%s", msg)
	}
}

func (p *parser) peer() *Peer { return &p.cfg.Peers[len(p.cfg.Peers)-1] }

// parseKey decodes a base64 key into k. Its message never shows the value.
func parseKey(v string, k *[KeyLen]byte) string {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil || len(b) != KeyLen {
		return "not a valid key (want 32 bytes in base64, 44 characters)"
	}
	copy(k[:], b)
	return ""
}

// list splits a comma-separated value, calling f for each item.
func list(v string, f func(item string) string) string {
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return "empty item in the list"
		}
		if msg := f(item); msg != "" {
			return msg
		}
	}
	return ""
}

func (p *parser) setAddress(v string) string {
	return list(v, func(item string) string {
		a, msg := p.parseAddrOrPrefix(item)
		if msg != "" {
			return msg
		}
		p.cfg.Interface.Addresses = append(p.cfg.Interface.Addresses, a)
		return ""
	})
}

// parseAddrOrPrefix reads "10.0.0.2/24" (keeping the host address) or
// "10.0.0.2" (a single host).
func (p *parser) parseAddrOrPrefix(s string) (netip.Prefix, string) {
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, p.quote(s) + " is not an IP address with a prefix length"
		}
		return netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()), ""
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, p.quote(s) + " is not an IP address"
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), ""
}

func (p *parser) setDNS(v string) string {
	return list(v, func(item string) string {
		if a, err := netip.ParseAddr(item); err == nil && a.Zone() == "" {
			p.cfg.Interface.DNS = append(p.cfg.Interface.DNS, a.Unmap())
			return ""
		}
		if isHostName(item) {
			p.warnf("search domain %s ignored: warren resolves names through the tunnel, without search domains", p.quote(item))
			return ""
		}
		return p.quote(item) + " is neither an IP address nor a search domain"
	})
}

func (p *parser) setMTU(v string) string {
	n, err := strconv.Atoi(v)
	if err != nil || n < minMTU || n > maxMTU {
		return fmt.Sprintf("want a number from %d to %d", minMTU, maxMTU)
	}
	p.cfg.Interface.MTU = n
	p.mtuLine = p.line
	return ""
}

func (p *parser) setListenPort(v string) string {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return "want a port number from 0 to 65535"
	}
	p.cfg.Interface.ListenPort = uint16(n)
	return ""
}

func (p *parser) setEndpoint(v string) string {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "want host:port, with an IPv6 address in brackets ([2001:db8::1]:51820)"
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "want a port number from 1 to 65535"
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "an endpoint address cannot have a zone"
		}
		host = a.Unmap().String()
	} else if !isHostName(host) {
		return p.quote(host) + " is neither an IP address nor a host name"
	}
	p.peer().Endpoint = Endpoint{Host: host, Port: uint16(n)}
	return ""
}

func (p *parser) setAllowedIPs(v string) string {
	return list(v, func(item string) string {
		pfx, msg := p.parseAddrOrPrefix(item)
		if msg != "" {
			return msg
		}
		p.peer().AllowedIPs = append(p.peer().AllowedIPs, pfx.Masked())
		return ""
	})
}

func (p *parser) setKeepalive(v string) string {
	if strings.EqualFold(v, "off") {
		return ""
	}
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return `want "off" or seconds from 0 to 65535`
	}
	p.peer().PersistentKeepalive = time.Duration(n) * time.Second
	return ""
}

// isHostName reports whether s is a valid DNS host name: dot-separated
// labels of letters, digits and hyphens, not starting or ending with a
// hyphen, at most 63 characters each and 253 in all, and not all digits.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	letters := false
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
				letters = true
			case '0' <= c && c <= '9', c == '-':
			default:
				return false
			}
		}
	}
	return letters
}

// validate checks what no single line shows, and fills in defaults.
func (p *parser) validate() {
	if p.wgConfigLine != 0 {
		return // the interface and peers are in the WGConfig file, checked with it
	}
	cfg := &p.cfg.Interface
	if p.interfaceLine == 0 {
		msg := "no [Interface] section"
		if p.frontends {
			msg += ", and no WGConfig naming a wg-quick file that has one"
		}
		p.issueAt(0, "", msg)
	} else {
		if cfg.PrivateKey == (PrivateKey{}) {
			p.issueAt(p.interfaceLine, "[Interface]", "no PrivateKey")
		}
		if len(cfg.Addresses) == 0 {
			p.issueAt(p.interfaceLine, "[Interface]", "no Address: warren needs the tunnel's own address")
		}
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	for _, a := range cfg.Addresses {
		if a.Addr().Is6() && cfg.MTU < minMTUIPv6 && p.mtuLine != 0 {
			p.issueAt(p.mtuLine, "MTU", fmt.Sprintf("an IPv6 tunnel needs an MTU of at least %d", minMTUIPv6))
			break
		}
	}
	if len(p.cfg.Peers) == 0 {
		p.issueAt(0, "", "no [Peer] section")
		return
	}
	own := cfg.PrivateKey.PublicKey()
	firstLine := make(map[PublicKey]int)
	hasEndpoint := false
	for i, peer := range p.cfg.Peers {
		if p.wireproxy && len(peer.AllowedIPs) == 0 {
			p.cfg.Peers[i].AllowedIPs = []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
		}
		hasEndpoint = hasEndpoint || !peer.Endpoint.IsZero()
		switch first, dup := firstLine[peer.PublicKey]; {
		case peer.PublicKey == (PublicKey{}):
			p.issueAt(peer.Line, "[Peer]", "no PublicKey")
			continue
		case dup:
			p.issueAt(peer.Line, "[Peer]", fmt.Sprintf("same PublicKey as the peer on line %d", first))
		case cfg.PrivateKey != (PrivateKey{}) && peer.PublicKey == own:
			p.issueAt(peer.Line, "[Peer]", "its PublicKey is this interface's own public key")
		}
		firstLine[peer.PublicKey] = peer.Line
	}
	if !hasEndpoint {
		p.issueAt(0, "", "no [Peer] has an Endpoint; warren needs one to connect to")
	}
}
