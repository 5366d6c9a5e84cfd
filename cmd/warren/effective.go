package main

// This file holds the log of the effective configuration that warren up
// writes once at start, with every secret left out.

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/dnsserver"
	"github.com/warren-vpn/warren/proxy"
)

// redactedValue stands for a secret that is set.
const redactedValue = "(redacted)"

// logEffective logs what warren up runs with: where the config came from,
// the mode and the listeners in one line, then a line for each config with
// its interface and peers. Of a secret it logs only whether it is set.
func logEffective(log *slog.Logger, src *wgSource, mode []any, o *appOptions) {
	exposes, probes := exposeList(o.exposes), addrList(o.probes)
	attrs := append([]any{"source", src.String()}, mode...)
	attrs = append(attrs,
		"socks5", listenersString(o.socks5),
		"http", listenersString(o.http),
		"dns", orOff(o.dns),
		"forwards", forwardsString(o.forwards),
		"exposes", orNone(exposes.String()),
		"api", apiString(o.api),
		"api_token", isSet(o.apiToken != ""),
		"hold", o.hold.String(),
		"probes", orNone(probes.String()),
	)
	attrs = append(attrs, o.limits.logAttrs()...)
	log.Info("effective configuration", attrs...)
	for _, c := range o.configs {
		log.Info("effective WireGuard config", wgConfigAttrs(c)...)
	}
}

// logAttrs are the limits, for logEffective: as the flags give them, with
// the defaults filled in.
func (l *limitOptions) logAttrs() []any {
	count := func(n, def int) string {
		switch {
		case n < 0:
			return "none"
		case n == 0:
			n = def
		}
		return strconv.Itoa(n)
	}
	duration := func(d, def time.Duration) string {
		switch {
		case d < 0:
			return "never"
		case d == 0:
			d = def
		}
		return d.String()
	}
	cacheSize := "none"
	if b := byteSize(l.dnsCacheBytes); b >= 0 {
		if b == 0 {
			b = dnsserver.DefaultCacheBytes
		}
		cacheSize = b.String()
	}
	allow := prefixList(l.allowFrom)
	return []any{
		"max_flows", count(l.maxFlows, proxy.DefaultMaxFlows),
		"max_flows_per_client", count(l.maxFlowsPerClient, proxy.DefaultMaxFlowsPerClient),
		"allow_from", orDefault(allow.String(), "any"),
		"allow_unauthenticated_remote", l.allowUnauthenticatedRemote,
		"handshake_timeout", duration(l.handshakeTimeout, proxy.DefaultHandshakeTimeout),
		"udp_idle_timeout", duration(l.udpIdleTimeout, proxy.DefaultUDPIdleTimeout),
		"dns_cache_entries", count(l.dnsCacheEntries, dnsserver.DefaultCacheEntries),
		"dns_cache_size", cacheSize,
		"dns_max_inflight", count(l.dnsMaxInFlight, dnsserver.DefaultMaxInFlight),
	}
}

// orDefault is s, or def if s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// logAttrs are the mode and, in host mode, its settings, for logEffective.
func (f *hostFlags) logAttrs() []any {
	if f.mode != "host" {
		return []any{"mode", f.mode}
	}
	return []any{"mode", f.mode, "tun", f.tun, "fwmark", f.fwmark, "allow_lan", f.allowLAN,
		"lockdown", f.lockdown, "manage_resolv_conf", f.manageResolv, "bootstrap_dns", orNone(f.bootstrapDNS.String())}
}

// wgConfigAttrs describes one config: its interface, then each peer as a
// group ("peer", or "peer1", "peer2", … when there are several).
func wgConfigAttrs(c *config.Config) []any {
	in := c.Interface
	listenPort := "any"
	if in.ListenPort != 0 {
		listenPort = strconv.Itoa(int(in.ListenPort))
	}
	attrs := []any{"config", c.Path}
	if c.WGConfig != "" {
		attrs = append(attrs, "wgconfig", c.WGConfig)
	}
	attrs = append(attrs,
		"private_key", redactedValue,
		"addresses", joinStrings(in.Addresses),
		"dns_servers", orNone(joinStrings(in.DNS)),
		"mtu", in.MTU,
		"listen_port", listenPort,
	)
	for i, p := range c.Peers {
		name := "peer"
		if len(c.Peers) > 1 {
			name = fmt.Sprintf("peer%d", i+1)
		}
		keepalive := "off"
		if p.PersistentKeepalive > 0 {
			keepalive = p.PersistentKeepalive.String()
		}
		attrs = append(attrs, slog.Group(name,
			"public_key", p.PublicKey.String(),
			"endpoint", orNone(p.Endpoint.String()),
			"allowed_ips", orNone(joinStrings(p.AllowedIPs)),
			"persistent_keepalive", keepalive,
			"preshared_key", isSet(!p.PresharedKey.IsZero()),
		))
	}
	return attrs
}

// listenersString describes a proxy's listeners: their addresses and, for
// those that require one, the user name, with the password redacted.
func listenersString(specs []listenSpec) string {
	var s []string
	for _, l := range specs {
		if l.creds == nil {
			s = append(s, l.addr)
			continue
		}
		s = append(s, fmt.Sprintf("%s (user %s, password %s)", l.addr, l.creds.User, redactedValue))
	}
	return orOff(strings.Join(s, ", "))
}

// forwardsString describes the forwards as --forward takes them.
func forwardsString(fwds []forwardSpec) string {
	var s []string
	for _, f := range fwds {
		prefix := ""
		switch {
		case f.tcp && !f.udp:
			prefix = "tcp:"
		case f.udp && !f.tcp:
			prefix = "udp:"
		}
		s = append(s, prefix+f.local+"="+f.target)
	}
	return orNone(strings.Join(s, ","))
}

// apiString describes the API's listeners.
func apiString(specs []apiSpec) string {
	var s []string
	for _, a := range specs {
		s = append(s, a.network+":"+a.addr)
	}
	return orOff(strings.Join(s, ","))
}

func joinStrings[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func orOff(s string) string {
	if s == "" {
		return off
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// isSet says whether a secret is set, without it.
func isSet(set bool) string {
	if set {
		return redactedValue
	}
	return "none"
}
