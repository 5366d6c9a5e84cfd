package config

import (
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// This file holds what only wireproxy's format has: how a file is told to
// be in it, go-ini's comments and quotes, $NAME values, the keys before the
// first section, the listener sections, and WGConfig.

// wireproxySections are the sections that only a wireproxy config has, by
// their lower-case names, with their usual spelling.
var wireproxySections = map[string]string{
	"socks5":          "[Socks5]",
	"http":            "[http]",
	"tcpclienttunnel": "[TCPClientTunnel]",
	"tcpservertunnel": "[TCPServerTunnel]",
	"stdiotunnel":     "[STDIOTunnel]",
	"udpproxytunnel":  "[UDPProxyTunnel]",
}

// topLevelKeys are the keys a wireproxy config may have before its first
// section, besides checkAliveKeys.
var topLevelKeys = map[string]keySpec{
	"wgconfig": {true, (*parser).setWGConfig},
}

// checkAliveKeys are wireproxy's liveness keys, which warren accepts with a
// warning, before the first section or in [Interface] (where wireproxy reads
// them).
var checkAliveKeys = map[string]string{
	"checkalive":         "CheckAlive",
	"checkaliveinterval": "CheckAliveInterval",
}

// isWireproxy reports whether a file is a wireproxy config: it has one of
// wireproxy's keys before its first section, or one of wireproxy's sections.
func isWireproxy(lines []string) bool {
	top := true
	for _, raw := range lines {
		kind, text, _, _ := lexINI(raw)
		switch kind {
		case headerLine:
			top = false
			if name, _ := sectionName(text); wireproxySections[strings.ToLower(name)] != "" {
				return true
			}
		case keyLine:
			lower := strings.ToLower(text)
			if _, ok := topLevelKeys[lower]; top && (ok || checkAliveKeys[lower] != "") {
				return true
			}
		}
	}
	return false
}

// lexINI reads one line as go-ini, which wireproxy uses, does: '#' and ';'
// start a comment, even after a value; a value in `backquotes` or in
// """triple quotes""" is taken as it is, comment characters and all; and a
// value in "double" or 'single' quotes loses them.
func lexINI(raw string) (kind lineKind, text, value, msg string) {
	line := strings.TrimSpace(raw)
	switch {
	case line == "" || line[0] == '#' || line[0] == ';':
		return blankLine, "", "", ""
	case line[0] == '[':
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		return headerLine, line, "", ""
	}
	key, value, ok := strings.Cut(line, "=")
	key = strings.TrimSpace(key)
	if !ok || key == "" {
		return badLine, "", "", ""
	}
	value, msg = iniValue(strings.TrimSpace(value))
	return keyLine, key, value, msg
}

// iniValue unquotes a value and drops its comment, as lexINI says. Its
// message never shows the value.
func iniValue(v string) (value, msg string) {
	for _, q := range []string{`"""`, "`"} {
		if !strings.HasPrefix(v, q) || len(v) == len(q) && q == `"""` {
			continue
		}
		rest := v[len(q):]
		end := strings.LastIndex(rest, q)
		if end < 0 {
			return "", "no closing " + q + " (a quoted value ends on its line)"
		}
		if after := strings.TrimSpace(rest[end+len(q):]); after != "" && after[0] != '#' && after[0] != ';' {
			return "", "text after the closing " + q
		}
		return rest[:end], ""
	}
	if i := strings.IndexAny(v, "#;"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		v = v[1 : len(v)-1]
	}
	return v, ""
}

// expand returns a wireproxy value with an environment variable's value in
// place of $NAME or ${NAME} (the whole value), and the variable's name, or
// "" for a value written out. "$$" at the start stands for "$". Its message
// never shows the value.
func (p *parser) expand(v string) (value, from, msg string) {
	if !strings.HasPrefix(v, "$") {
		return v, "", ""
	}
	if strings.HasPrefix(v, "$$") {
		return v[1:], "", ""
	}
	name := v[1:]
	if inner, braced := strings.CutPrefix(name, "{"); braced {
		name, braced = strings.CutSuffix(inner, "}")
		if !braced {
			name = ""
		}
	}
	if !isEnvName(name) {
		return "", "", "a value that starts with $ names an environment variable, $NAME or ${NAME} (letters, digits and _); write $$ for a literal $"
	}
	value, ok := p.opts.LookupEnv(name)
	if !ok {
		return "", "", "environment variable $" + name + " is not set"
	}
	return value, name, ""
}

// isEnvName reports whether s is a shell variable name: letters, digits and
// underscores, not starting with a digit.
func isEnvName(s string) bool {
	if s == "" || '0' <= s[0] && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// setWGConfig reads WGConfig: a path relative to the wireproxy config's
// directory, or absolute.
func (p *parser) setWGConfig(v string) string {
	if !filepath.IsAbs(v) {
		v = filepath.Join(filepath.Dir(p.file), v)
	}
	p.wgConfig, p.wgConfigFrom = v, p.from
	return ""
}

// readWGConfig reads the wg-quick file that WGConfig names, as wireproxy
// reads it, and takes its interface and peers. Its issues name that file.
func (p *parser) readWGConfig() {
	path := p.wgConfig
	var data []byte
	var perm fs.FileMode
	var err error
	if p.opts.ReadFile != nil {
		data, err = p.opts.ReadFile(path)
	} else {
		data, perm, err = readConfigFile(path)
	}
	if err != nil {
		// A path from the environment is shown only once it is known to
		// name a file: a mistyped variable name may pick a secret.
		shown := path
		if p.wgConfigFrom != "" {
			shown = "the file $" + p.wgConfigFrom + " names"
		}
		p.issueAt(p.wgConfigLine, p.wgConfigKey, fmt.Sprintf("cannot read %s: %s", shown, openErrorReason(err)))
		sortIssues(p.errs)
		return
	}
	wg := newParser(path, p.opts)
	wg.wireproxy = true
	wg.read(data, false)
	wg.warnIfReadable(perm)
	p.cfg.Interface, p.cfg.Peers, p.cfg.WGConfig = wg.cfg.Interface, wg.cfg.Peers, path
	p.errs = append(p.errs, wg.errs...)
	p.warns = append(p.warns, wg.warns...)
}

// listener is a listener section being read. At the section's end it is
// checked and added to Config.Frontends.
type listener struct {
	kind   sectionKind
	header string // as written, for messages
	line   int
	bind   string
	target string
	port   uint16
	user   string
	pass   Password
}

var listenerKinds = map[string]sectionKind{
	"socks5":          inSocks5,
	"http":            inHTTP,
	"tcpclienttunnel": inForward,
	"tcpservertunnel": inExpose,
}

var proxyKeys = map[string]keySpec{
	"bindaddress": {true, (*parser).setBindAddress},
	"username":    {true, func(p *parser, v string) string { p.lst.user = v; return "" }},
	"password":    {true, func(p *parser, v string) string { p.lst.pass = Password(v); return "" }},
}

var forwardKeys = map[string]keySpec{
	"bindaddress": {true, (*parser).setBindAddress},
	"target":      {true, (*parser).setTarget},
}

var exposeKeys = map[string]keySpec{
	"listenport": {true, (*parser).setExposePort},
	"target":     {true, (*parser).setTarget},
}

// requiredKeys are the keys each listener section must have, and what its
// absence's message says.
var requiredKeys = map[sectionKind][][2]string{
	inSocks5:  {{"bindaddress", "no BindAddress, the host:port to listen on"}},
	inHTTP:    {{"bindaddress", "no BindAddress, the host:port to listen on"}},
	inForward: {{"bindaddress", "no BindAddress, the host:port to listen on"}, {"target", "no Target, the host:port to connect to inside the tunnel"}},
	inExpose:  {{"listenport", "no ListenPort, the port to listen on at the tunnel's addresses"}, {"target", "no Target, the host:port to connect to"}},
}

// startWireproxySection starts a section of a wireproxy config other than
// [Interface] and [Peer]; lower is its name in lower case.
func (p *parser) startWireproxySection(lower string) {
	if kind, ok := listenerKinds[lower]; ok {
		p.section = kind
		p.lst = &listener{kind: kind, header: p.key, line: p.line}
		return
	}
	switch lower {
	case "stdiotunnel":
		p.errorf("warren does not support wireproxy's STDIOTunnel; a [TCPClientTunnel] forwards a local port to the same Target, for a program that can connect to one")
	case "udpproxytunnel":
		p.errorf("warren does not support wireproxy's UDPProxyTunnel in a config file; warren's --forward udp:LOCAL_ADDR=TUNNEL_ADDR does the same")
	default:
		p.errorf("unknown section; a wireproxy config has [Interface], [Peer], [Socks5], [http], [TCPClientTunnel] and [TCPServerTunnel] sections")
	}
}

// endSection checks the listener section just read, if any, and adds it to
// the config. p.seen still holds the section's keys.
func (p *parser) endSection() {
	l := p.lst
	if l == nil {
		return
	}
	p.lst = nil
	for _, req := range requiredKeys[l.kind] {
		if _, ok := p.seen[req[0]]; !ok {
			p.issueAt(l.line, l.header, req[1])
		}
	}
	_, user := p.seen["username"]
	_, pass := p.seen["password"]
	switch {
	case user && !pass:
		p.issueAt(l.line, l.header, "a Username without a Password; give both, or neither for no authentication")
	case pass && !user:
		p.issueAt(l.line, l.header, "a Password without a Username; give both, or neither for no authentication")
	}
	fe := &p.cfg.Frontends
	switch l.kind {
	case inSocks5:
		fe.SOCKS5 = append(fe.SOCKS5, ProxyListener{BindAddress: l.bind, Username: l.user, Password: l.pass, Line: l.line})
	case inHTTP:
		fe.HTTP = append(fe.HTTP, ProxyListener{BindAddress: l.bind, Username: l.user, Password: l.pass, Line: l.line})
	case inForward:
		fe.Forwards = append(fe.Forwards, Forward{BindAddress: l.bind, Target: l.target, Line: l.line})
	case inExpose:
		fe.Exposes = append(fe.Exposes, Expose{ListenPort: l.port, Target: l.target, Line: l.line})
	}
}

func (p *parser) setBindAddress(v string) string {
	if msg := p.checkHostPort(v, true); msg != "" {
		return msg
	}
	p.lst.bind = v
	return ""
}

func (p *parser) setTarget(v string) string {
	if msg := p.checkHostPort(v, false); msg != "" {
		return msg
	}
	p.lst.target = v
	return ""
}

func (p *parser) setExposePort(v string) string {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return "want a port number from 1 to 65535"
	}
	p.lst.port = uint16(n)
	return ""
}

// checkHostPort checks a BindAddress (listen) or a Target: host:port, whose
// port is a number from 1 to 65535 and whose host is an IP address or a host
// name. A BindAddress's host may be empty (every address); an address may
// have a zone only where it is on the local network, not inside the tunnel.
func (p *parser) checkHostPort(v string, listen bool) string {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "want host:port, with an IPv6 address in brackets ([::1]:1080)"
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		return "want a port number from 1 to 65535"
	case n == 0 && listen:
		return "port 0 would listen on a port picked at random, which no client could know; want a port from 1 to 65535"
	case n == 0:
		return "port 0 cannot be connected to; want a port from 1 to 65535"
	}
	if host == "" {
		if listen {
			return ""
		}
		return "no host; want host:port"
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" && !listen && p.section != inExpose {
			return "an address inside the tunnel cannot have a zone"
		}
		return ""
	}
	if !isHostName(host) {
		return p.quote(host) + " is neither an IP address nor a host name"
	}
	return ""
}
