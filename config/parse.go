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
	// Msg says what is wrong. It never contains the value of a key.
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

// Load reads and parses the config file at path. Besides Parse's warnings,
// it warns when the file is readable by its group or others.
func Load(path string) (*Config, []*Issue, error) {
	fail := func(msg string) (*Config, []*Issue, error) {
		return nil, nil, Errors{{File: path, Msg: msg}}
	}
	f, err := os.Open(path)
	if err != nil {
		return fail(describeOpenError(err))
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fail(describeOpenError(err))
	}
	if info.IsDir() {
		return fail("is a directory, not a config file")
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fail(describeOpenError(err))
	}
	cfg, warnings, err := Parse(path, data)
	if info.Mode().Perm()&0o044 != 0 {
		w := &Issue{File: path, Msg: fmt.Sprintf("readable by group or others (mode %04o), and it holds a private key: chmod 600 %s", info.Mode().Perm(), path)}
		warnings = append([]*Issue{w}, warnings...)
	}
	return cfg, warnings, err
}

// describeOpenError says why a file could not be read, without repeating its
// path (the Issue names it).
func describeOpenError(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "cannot read: no such file"
	case errors.Is(err, fs.ErrPermission):
		return "cannot read: permission denied"
	}
	return "cannot read: " + err.Error()
}

// Parse parses a wg-quick config. name is used in messages (and as
// Config.Path). It returns the config and its warnings, or, if there is any
// error, a nil config and Errors with every error found.
func Parse(name string, data []byte) (*Config, []*Issue, error) {
	p := &parser{file: name, cfg: &Config{Path: name}}
	if len(data) > MaxFileSize {
		return nil, nil, Errors{{File: name, Msg: fmt.Sprintf("larger than %d bytes; not a WireGuard config", MaxFileSize)}}
	}
	p.parse(data)
	p.validate()
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool { return lineOrder(p.errs[i].Line) < lineOrder(p.errs[j].Line) })
		return nil, p.warns, p.errs
	}
	return p.cfg, p.warns, nil
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
	noSection sectionKind = iota
	inInterface
	inPeer
	skipSection // a duplicate or unknown section: its keys are not read
)

// parser holds the state of one Parse.
type parser struct {
	file  string
	cfg   *Config
	errs  Errors
	warns []*Issue // problems that do not stop the config from being used

	section       sectionKind
	interfaceLine int            // line of [Interface], 0 if none yet
	seen          map[string]int // single-valued keys of the current section -> line
	mtuLine       int

	// line and key are those of the key being read, for messages.
	line int
	key  string
}

func (p *parser) errorf(format string, args ...any) {
	p.errs = append(p.errs, &Issue{File: p.file, Line: p.line, Key: p.key, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) warnf(format string, args ...any) {
	p.warns = append(p.warns, &Issue{File: p.file, Line: p.line, Key: p.key, Msg: fmt.Sprintf(format, args...)})
}

// issueAt records an error about a line other than the current one.
func (p *parser) issueAt(line int, key, msg string) {
	p.errs = append(p.errs, &Issue{File: p.file, Line: line, Key: key, Msg: msg})
}

func (p *parser) parse(data []byte) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	for i, raw := range strings.Split(string(data), "\n") {
		p.line, p.key = i+1, ""
		line, _, _ := strings.Cut(raw, "#")
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.HasPrefix(line, "["):
			p.startSection(line)
		default:
			key, value, ok := strings.Cut(line, "=")
			key, value = strings.TrimSpace(key), strings.TrimSpace(value)
			if !ok || key == "" {
				p.errorf("not a section header or key = value")
				continue
			}
			p.key = key
			p.setKey(key, value)
		}
	}
}

func (p *parser) startSection(line string) {
	name, ok := strings.CutSuffix(line, "]")
	name = strings.TrimSpace(strings.TrimPrefix(name, "["))
	p.key = line
	p.seen = make(map[string]int)
	switch {
	case !ok:
		p.errorf("not a section header: missing ']'")
		p.section = skipSection
	case strings.EqualFold(name, "Interface"):
		if p.interfaceLine != 0 {
			p.errorf("a second [Interface] section (the first is on line %d); a config has one", p.interfaceLine)
			p.section = skipSection
			return
		}
		p.interfaceLine = p.line
		p.section = inInterface
	case strings.EqualFold(name, "Peer"):
		p.cfg.Peers = append(p.cfg.Peers, Peer{Line: p.line})
		p.section = inPeer
	default:
		p.errorf("unknown section; a wg-quick config has [Interface] and [Peer] sections")
		p.section = skipSection
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

func (p *parser) setKey(key, value string) {
	lower := strings.ToLower(key)
	var spec keySpec
	var known bool
	switch p.section {
	case noSection:
		p.errorf("outside a section; keys go under [Interface] or [Peer]")
		return
	case skipSection:
		return // the section's header has been reported
	case inInterface:
		if name, ok := ignoredKeys[lower]; ok {
			p.warnf("ignored: %s has no meaning for warren", name)
			return
		}
		spec, known = interfaceKeys[lower]
	case inPeer:
		spec, known = peerKeys[lower]
	}
	if !known {
		where := "[Interface]"
		if p.section == inPeer {
			where = "[Peer]"
		}
		p.errorf("unknown key in %s", where)
		return
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
		a, msg := parseAddrOrPrefix(item)
		if msg != "" {
			return msg
		}
		p.cfg.Interface.Addresses = append(p.cfg.Interface.Addresses, a)
		return ""
	})
}

// parseAddrOrPrefix reads "10.0.0.2/24" (keeping the host address) or
// "10.0.0.2" (a single host).
func parseAddrOrPrefix(s string) (netip.Prefix, string) {
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Sprintf("%q is not an IP address with a prefix length", s)
		}
		return netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()), ""
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Sprintf("%q is not an IP address", s)
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
			p.warnf("search domain %q ignored: warren resolves names through the tunnel, without search domains", item)
			return ""
		}
		return fmt.Sprintf("%q is neither an IP address nor a search domain", item)
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
		return fmt.Sprintf("%q is neither an IP address nor a host name", host)
	}
	p.peer().Endpoint = Endpoint{Host: host, Port: uint16(n)}
	return ""
}

func (p *parser) setAllowedIPs(v string) string {
	return list(v, func(item string) string {
		pfx, msg := parseAddrOrPrefix(item)
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
	cfg := &p.cfg.Interface
	if p.interfaceLine == 0 {
		p.issueAt(0, "", "no [Interface] section")
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
	for _, peer := range p.cfg.Peers {
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
