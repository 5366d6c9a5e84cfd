//go:build linux

package hostmode

// This file is the host-mode kill switch: one nftables table, "inet warren",
// programmed over netlink with github.com/google/nftables (no nft or iptables
// subprocess), replaced atomically on every state change and read back.
//
// When Ruleset.Block is set (every state but Disconnected without lockdown),
// the table has three filtering base chains, input, output and forward, of
// type filter at priority 0 with policy drop, and these rules, tried in
// order:
//
//	#   traffic                                     output           input                      when
//	1   loopback (oif/iif lo): warren's DNS server  accept           accept                     always
//	2   NDP: ICMPv6 with hop limit 255              RS, NS, NA       RA, NS, NA, redirect       always
//	3   DHCPv4: udp 68 -> 67 out, 67 -> 68 in       accept           accept                     always
//	4   DHCPv6 from fe80::/10: udp 546 <-> 547      accept           accept                     always
//	5   conntrack state invalid                     drop             drop                       always
//	6   UDP from a socket with Mark to an Endpoint  accept           from it, established       Endpoints not empty
//	7   UDP, TCP from a socket with Mark to port 53 accept           from port 53, established  ResolveEndpoint
//	8   port 53 over TUN to a TunnelDNS address     accept           (row 10)                   Connected
//	9   port 53 anywhere else                       reject, counted  -                          always
//	10  anything else over TUN                      accept           established, related       Connected; IPv6 only if TunnelIPv6
//	11  the LAN (below), by address                 accept           accept                     AllowLAN
//	12  everything else                             reject, counted  drop                       always
//	    forwarded traffic                           -                -                          dropped, always
//
// There is no blanket "ct state established accept": conntrack state only
// lets in the replies of a path the output chain still allows. A connection
// opened before a switch (over eth0 before the table went in, or over the
// tunnel before it went down) stops at its next packet; going out, the reject
// answers it with a TCP reset. "Reject" is a TCP reset for TCP and an ICMP or
// ICMPv6 administratively-prohibited error for everything else, so that
// applications fail at once instead of timing out.
//
// Consequences worth knowing:
//   - Port 53 stays refused on the LAN, even with AllowLAN: a resolver there
//     would see every name looked up (row 9 comes before row 11).
//   - With TunnelIPv6 false, IPv6 over TUN is rejected like IPv6 anywhere
//     else: only loopback, NDP, link-local DHCPv6 and, with AllowLAN, fc00::/7
//     and fe80::/10 pass. The endpoints themselves may be IPv6 either way.
//   - The LAN is 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16,
//     fc00::/7 and fe80::/10 in both directions, and going out the multicast a
//     LAN needs: 224.0.0.0/24, 239.255.255.250 (SSDP), 255.255.255.255,
//     ff01::/16, ff02::/16 and ff05::/16. It is matched by address on any
//     interface, so a private source arriving over TUN is accepted too.
//   - ICMP errors about the endpoint's UDP flow (such as "fragmentation
//     needed") are dropped like other unsolicited ICMP: the tunnel's MTU must
//     leave room for the path, as with every WireGuard setup.
//   - Rows 7 and 10 accept replies by port or interface, so the replies of a
//     connection from before the switch may still come in on those paths;
//     nothing of it can go out.
//   - Nothing is forwarded in any state: containers or VMs routed through
//     this host have no path while the table is in.
//
// When Mark is set, two more base chains, of type filter at the mangle
// priority (-150) with policy accept, filter nothing; they carry the mark of
// warren's flows from its packets going out to the replies coming in, as
// wg-quick does:
//
//	chain        hook         rule
//	mark-save    postrouting  "save mark":    meta mark Mark ct mark set meta mark
//	mark-restore prerouting   "restore mark": ct mark Mark meta mark set ct mark
//
// With net.ipv4.conf.all.src_valid_mark=1 (Host sets it), the kernel's
// reverse-path check of an incoming packet looks its source up with the
// packet's mark. The endpoint's replies then follow the routing rule for
// marked packets, to the main table and the uplink they came in on. Without
// the mark they would route into warren's table, whose default route is the
// TUN, and strict reverse-path filtering (rp_filter=1) would drop them as
// soon as the tunnel is up. Only flows of warren's marked sockets carry the
// conntrack mark; no other packet's mark is touched.
//
// When Block is not set the table is removed and the host's own rules apply.

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the name of warren's nftables table, of family inet.
const TableName = "warren"

// Ruleset is the kill switch for one state. Its zero value means "no kill
// switch": Apply(Ruleset{}) is the same as Remove.
type Ruleset struct {
	// Block installs the table. When false, Apply removes it (Disconnected
	// without lockdown) and the other fields are ignored.
	Block bool

	// Connected lets traffic use the tunnel interface TUN.
	Connected bool

	// TUN is the tunnel interface's name, e.g. "warren0". Required when
	// Connected.
	TUN string

	// Mark is the fwmark (SO_MARK) of warren's own WireGuard socket and of its
	// endpoint look-ups. Only a process with CAP_NET_ADMIN can set it, so only
	// warren's sockets match. Required (non-zero) when Endpoints is not empty
	// or ResolveEndpoint is set. When non-zero, the table also carries it
	// from warren's packets to their replies (the mark chains, above).
	Mark uint32

	// Endpoints are the peer endpoints the marked socket may send UDP to, and
	// hear back from, in Connecting and Connected. Empty means none.
	Endpoints []netip.AddrPort

	// ResolveEndpoint allows marked UDP and TCP to port 53 at any address, so
	// warren can resolve the endpoint's host name at each attempt.
	ResolveEndpoint bool

	// TunnelDNS are the tunnel's DNS servers. When Connected, port 53 is
	// allowed to these addresses, over TUN only. IPv6 ones are used only when
	// TunnelIPv6 is set.
	TunnelDNS []netip.Addr

	// TunnelIPv6 says the tunnel carries IPv6. When false, IPv6 over TUN is
	// rejected like IPv6 everywhere else.
	TunnelIPv6 bool

	// AllowLAN allows the private and link-local ranges, in and out, on any
	// interface, and the link multicast a LAN needs. Port 53 stays refused.
	AllowLAN bool
}

// A Firewall programs the kill switch table, inet warren, in one network
// namespace; the policy is described at the top of this file. Its methods are
// safe for concurrent use; calls are serialised.
type Firewall struct {
	// opts open a netlink connection in the Firewall's namespace. Each
	// operation uses a Conn of its own, so that a batch abandoned half-built
	// can never be sent by a later Flush.
	opts []nftables.ConnOption

	// mu serialises Apply, Remove and Present, so that a read-back sees the
	// batch just sent and no other.
	mu sync.Mutex
}

// NewFirewall returns a Firewall that talks netlink in the network namespace of
// the calling process or, when netnsFd > 0, in the namespace that netnsFd
// refers to (a file descriptor of /run/netns/NAME or /proc/PID/ns/net). The
// caller keeps netnsFd open for as long as it uses the Firewall. Descriptor 0
// is refused: the netlink library reads 0 as "the current namespace", which
// would silently program the wrong one.
//
// NewFirewall checks that nftables answers (it needs CAP_NET_ADMIN in that
// namespace); it changes nothing.
func NewFirewall(netnsFd int) (*Firewall, error) {
	var opts []nftables.ConnOption
	switch {
	case netnsFd == 0:
		return nil, errors.New("hostmode: firewall: network namespace descriptor 0 is not supported")
	case netnsFd > 0:
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	f := &Firewall{opts: opts}
	conn, err := f.newConn()
	if err != nil {
		return nil, err
	}
	if _, err := conn.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return nil, fmt.Errorf("hostmode: firewall: list nftables tables: %w", err)
	}
	return f, nil
}

func (f *Firewall) newConn() (*nftables.Conn, error) {
	conn, err := nftables.New(f.opts...)
	if err != nil {
		return nil, fmt.Errorf("hostmode: firewall: open netlink: %w", err)
	}
	return conn, nil
}

// Apply makes the table inet warren exactly r.
//
// When r.Block is set, one netlink batch deletes the old table, if any, and
// adds the new one with all its sets, chains and rules. The kernel commits a
// batch as a whole, so packets see either the old table or the new one, never
// no table; if the batch fails, the old table stays as it was. Apply then reads
// the table back and returns an error if it differs from what was sent.
//
// When r.Block is false, Apply is Remove.
func (f *Firewall) Apply(r Ruleset) error {
	if !r.Block {
		return f.Remove()
	}
	p, err := r.plan()
	if err != nil {
		return err
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	conn, err := f.newConn()
	if err != nil {
		return err
	}

	t := fwTable()
	// Adding a table that exists is a no-op, so "add; delete; add" works
	// whether or not the table was there, all in one transaction.
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	for _, s := range p.sets {
		set := &nftables.Set{
			Table:         t,
			ID:            s.ref.id,
			Name:          s.ref.name,
			KeyType:       s.keyType,
			Concatenation: len(nftables.ConcatSetTypeElements(s.keyType)) > 1,
		}
		elems := make([]nftables.SetElement, len(s.elems))
		for i, e := range s.elems {
			elems[i] = nftables.SetElement{Key: e}
		}
		if err := conn.AddSet(set, elems); err != nil {
			return fmt.Errorf("hostmode: firewall: set %s: %w", s.ref.name, err)
		}
	}
	for _, c := range p.chains {
		chain := conn.AddChain(&nftables.Chain{
			Name:     c.name,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookRef(c.hook),
			Priority: nftables.ChainPriorityRef(c.priority),
			Policy:   &c.policy,
		})
		for _, rule := range c.rules {
			conn.AddRule(&nftables.Rule{
				Table:    t,
				Chain:    chain,
				Exprs:    rule.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, rule.comment),
			})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostmode: firewall: apply table inet %s: %w", TableName, err)
	}
	return fwVerify(conn, p)
}

// Remove deletes the table if it is present, and returns nil if it was not.
// It touches nothing else.
func (f *Firewall) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	conn, err := f.newConn()
	if err != nil {
		return err
	}
	t := fwTable()
	// Add first so that the delete cannot fail for want of a table.
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("hostmode: firewall: remove table inet %s: %w", TableName, err)
	}
	return nil
}

// Present reports whether the table exists.
func (f *Firewall) Present() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	conn, err := f.newConn()
	if err != nil {
		return false, err
	}
	return fwPresent(conn)
}

// fwPresent reports whether the table exists.
func fwPresent(conn *nftables.Conn) (bool, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("hostmode: firewall: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// errFWMismatch is wrapped by the error Apply returns when the table read back
// is not the table it sent.
var errFWMismatch = errors.New("hostmode: firewall: table read back differs from the one applied")

// fwVerify reads the table back and compares it with p.
func fwVerify(conn *nftables.Conn, p *fwPlan) error {
	got, err := fwReadTable(conn)
	if err != nil {
		return fmt.Errorf("hostmode: firewall: read back table: %w", err)
	}
	if err := fwDiffTable(p.state(), got); err != nil {
		return fmt.Errorf("%w: %v", errFWMismatch, err)
	}
	return nil
}

// fwTableState is what verification compares: the chains with their hook,
// priority, policy and rules (known by their comments), and the sets with
// their key type and elements. Rules are compared by comment and number of
// expressions, not expression by expression: every rule carries a unique
// comment within its chain, so a missing, extra or reordered rule shows.
type fwTableState struct {
	present bool
	chains  map[string]fwChainState
	sets    map[string]fwSetState
}

type fwChainState struct {
	typ      nftables.ChainType
	hook     nftables.ChainHook
	priority nftables.ChainPriority
	policy   nftables.ChainPolicy
	rules    []fwRuleState
}

type fwRuleState struct {
	comment string
	exprs   int
}

type fwSetState struct {
	keyType string
	elems   [][]byte // sorted
}

// fwReadTable reads the table's current state from the kernel.
func fwReadTable(conn *nftables.Conn) (fwTableState, error) {
	st := fwTableState{chains: map[string]fwChainState{}, sets: map[string]fwSetState{}}
	present, err := fwPresent(conn)
	if err != nil || !present {
		return st, err
	}
	st.present = true
	t := fwTable()

	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return st, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		cs := fwChainState{typ: c.Type}
		if c.Hooknum != nil {
			cs.hook = *c.Hooknum
		}
		if c.Priority != nil {
			cs.priority = *c.Priority
		}
		if c.Policy != nil {
			cs.policy = *c.Policy
		} else {
			cs.policy = nftables.ChainPolicyAccept // absent on a regular chain
		}
		rules, err := conn.GetRules(t, c)
		if err != nil {
			return st, fmt.Errorf("list rules of chain %s: %w", c.Name, err)
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			cs.rules = append(cs.rules, fwRuleState{comment: comment, exprs: len(r.Exprs)})
		}
		st.chains[c.Name] = cs
	}

	sets, err := conn.GetSets(t)
	if err != nil {
		return st, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return st, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		ss := fwSetState{keyType: s.KeyType.Name}
		for _, e := range elems {
			ss.elems = append(ss.elems, e.Key)
		}
		slices.SortFunc(ss.elems, bytes.Compare)
		st.sets[s.Name] = ss
	}
	return st, nil
}

// fwDiffTable returns an error describing every difference between want and
// got, or nil if they are the same.
func fwDiffTable(want, got fwTableState) error {
	var errs []error
	if want.present != got.present {
		return fmt.Errorf("table present = %v, want %v", got.present, want.present)
	}
	for _, name := range fwUnionKeys(want.chains, got.chains) {
		w, inWant := want.chains[name]
		g, inGot := got.chains[name]
		switch {
		case !inGot:
			errs = append(errs, fmt.Errorf("chain %s missing", name))
		case !inWant:
			errs = append(errs, fmt.Errorf("unexpected chain %s", name))
		default:
			if g.typ != w.typ || g.hook != w.hook || g.priority != w.priority || g.policy != w.policy {
				errs = append(errs, fmt.Errorf("chain %s: type %s hook %d priority %d policy %d, want type %s hook %d priority %d policy %d",
					name, g.typ, g.hook, g.priority, g.policy, w.typ, w.hook, w.priority, w.policy))
			}
			if !slices.Equal(g.rules, w.rules) {
				errs = append(errs, fmt.Errorf("chain %s: rules %v, want %v", name, g.rules, w.rules))
			}
		}
	}
	for _, name := range fwUnionKeys(want.sets, got.sets) {
		w, inWant := want.sets[name]
		g, inGot := got.sets[name]
		switch {
		case !inGot:
			errs = append(errs, fmt.Errorf("set %s missing", name))
		case !inWant:
			errs = append(errs, fmt.Errorf("unexpected set %s", name))
		case g.keyType != w.keyType:
			errs = append(errs, fmt.Errorf("set %s: type %q, want %q", name, g.keyType, w.keyType))
		case !slices.EqualFunc(g.elems, w.elems, bytes.Equal):
			errs = append(errs, fmt.Errorf("set %s: elements %x, want %x", name, g.elems, w.elems))
		}
	}
	return errors.Join(errs...)
}

func fwUnionKeys[V any](a, b map[string]V) []string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// A fwPlan is the table for one Ruleset, built before anything is sent, so that
// the same value drives both programming and verification.
type fwPlan struct {
	sets   []fwSetPlan
	chains []fwChainPlan
}

type fwSetPlan struct {
	ref     fwSetRef
	keyType nftables.SetDatatype
	elems   [][]byte // sorted, no duplicates
}

type fwChainPlan struct {
	name     string
	hook     nftables.ChainHook
	priority nftables.ChainPriority
	policy   nftables.ChainPolicy
	rules    []fwRulePlan
}

type fwRulePlan struct {
	comment string // unique within the chain; nft shows it as the rule's comment
	exprs   []expr.Any
}

// state is what verification expects to read back after applying p.
func (p *fwPlan) state() fwTableState {
	st := fwTableState{present: true, chains: map[string]fwChainState{}, sets: map[string]fwSetState{}}
	for _, c := range p.chains {
		cs := fwChainState{
			typ:      nftables.ChainTypeFilter,
			hook:     c.hook,
			priority: c.priority,
			policy:   c.policy,
		}
		for _, r := range c.rules {
			cs.rules = append(cs.rules, fwRuleState{comment: r.comment, exprs: len(r.exprs)})
		}
		st.chains[c.name] = cs
	}
	for _, s := range p.sets {
		st.sets[s.ref.name] = fwSetState{keyType: s.keyType.Name, elems: s.elems}
	}
	return st
}

// A fwSetRef names a set: by name in the kernel, and by an ID within the batch
// that creates it, which is how rules in the same batch find it.
type fwSetRef struct {
	name string
	id   uint32
}

// The table's sets.
var (
	fwSetEndpoint4 = fwSetRef{"endpoint4", 1} // ipv4_addr . inet_service
	fwSetEndpoint6 = fwSetRef{"endpoint6", 2} // ipv6_addr . inet_service
	fwSetDNS4      = fwSetRef{"dns4", 3}      // ipv4_addr
	fwSetDNS6      = fwSetRef{"dns6", 4}      // ipv6_addr
)

var (
	fwTypeEndpoint4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	fwTypeEndpoint6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// fwLANPrefixes are the private and link-local ranges AllowLAN opens in both
// directions; fwLANMulticast are the destinations it also opens going out.
var (
	fwLANPrefixes = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("fe80::/10"),
	}
	fwLANMulticast = []netip.Prefix{
		netip.MustParsePrefix("224.0.0.0/24"),
		netip.MustParsePrefix("239.255.255.250/32"),
		netip.MustParsePrefix("255.255.255.255/32"),
		netip.MustParsePrefix("ff01::/16"),
		netip.MustParsePrefix("ff02::/16"),
		netip.MustParsePrefix("ff05::/16"),
	}
	fwLinkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// ICMPv6 types of the neighbour discovery subset a host needs (RFC 4861).
const (
	fwICMPv6RouterSolicit   = 133
	fwICMPv6RouterAdvert    = 134
	fwICMPv6NeighborSolicit = 135
	fwICMPv6NeighborAdvert  = 136
	fwICMPv6Redirect        = 137
)

// validate checks the fields Apply relies on when Block is set.
func (r Ruleset) validate() error {
	if r.Connected && (r.TUN == "" || len(r.TUN) >= unix.IFNAMSIZ) {
		return fmt.Errorf("hostmode: firewall: invalid tunnel interface name %q", r.TUN)
	}
	if r.Mark == 0 && (len(r.Endpoints) > 0 || r.ResolveEndpoint) {
		// Mark 0 is every unmarked socket: the endpoint rules would let any
		// application through.
		return errors.New("hostmode: firewall: Mark must be non-zero to allow endpoints or endpoint resolution")
	}
	for _, ep := range r.Endpoints {
		if !ep.Addr().IsValid() || ep.Addr().Zone() != "" || ep.Port() == 0 {
			return fmt.Errorf("hostmode: firewall: invalid endpoint %v", ep)
		}
	}
	for _, a := range r.TunnelDNS {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("hostmode: firewall: invalid tunnel DNS address %v", a)
		}
	}
	return nil
}

// plan builds the table for r, which must have Block set.
func (r Ruleset) plan() (*fwPlan, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}

	var ep4, ep6, dns4, dns6 [][]byte
	for _, ep := range r.Endpoints {
		a := ep.Addr().Unmap()
		port := binaryutil.BigEndian.PutUint16(ep.Port())
		if a.Is4() {
			b := a.As4()
			// A concatenation pads each field to 4 bytes.
			ep4 = append(ep4, slices.Concat(b[:], port, []byte{0, 0}))
		} else {
			b := a.As16()
			ep6 = append(ep6, slices.Concat(b[:], port, []byte{0, 0}))
		}
	}
	for _, a := range r.TunnelDNS {
		a = a.Unmap()
		if a.Is4() {
			dns4 = append(dns4, a.AsSlice())
		} else {
			dns6 = append(dns6, a.AsSlice())
		}
	}
	p := &fwPlan{
		sets: []fwSetPlan{
			{ref: fwSetEndpoint4, keyType: fwTypeEndpoint4, elems: fwSortedUnique(ep4)},
			{ref: fwSetEndpoint6, keyType: fwTypeEndpoint6, elems: fwSortedUnique(ep6)},
			{ref: fwSetDNS4, keyType: nftables.TypeIPAddr, elems: fwSortedUnique(dns4)},
			{ref: fwSetDNS6, keyType: nftables.TypeIP6Addr, elems: fwSortedUnique(dns6)},
		},
	}

	var in, out []fwRulePlan
	add := func(rules *[]fwRulePlan, comment string, exprs ...[]expr.Any) {
		*rules = append(*rules, fwRulePlan{comment: comment, exprs: slices.Concat(exprs...)})
	}
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	replies := nftCtState(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED)
	established := nftCtState(expr.CtStateBitESTABLISHED)

	// 1. Loopback, including warren's own DNS server.
	add(&out, "loopback", nftIfindex(expr.MetaKeyOIF, 1), accept)
	add(&in, "loopback", nftIfindex(expr.MetaKeyIIF, 1), accept)

	// 2. Neighbour discovery, which never crosses a router (hop limit 255).
	add(&out, "ndp router solicitation", nftICMPv6Type(fwICMPv6RouterSolicit), accept)
	add(&out, "ndp neighbour solicitation", nftICMPv6Type(fwICMPv6NeighborSolicit), accept)
	add(&out, "ndp neighbour advertisement", nftICMPv6Type(fwICMPv6NeighborAdvert), accept)
	add(&in, "ndp router advertisement", nftICMPv6Type(fwICMPv6RouterAdvert), accept)
	add(&in, "ndp neighbour solicitation", nftICMPv6Type(fwICMPv6NeighborSolicit), accept)
	add(&in, "ndp neighbour advertisement", nftICMPv6Type(fwICMPv6NeighborAdvert), accept)
	add(&in, "ndp redirect", nftICMPv6Type(fwICMPv6Redirect), accept)

	// 3, 4. DHCP.
	add(&out, "dhcpv4", nftNFProto(unix.NFPROTO_IPV4), nftL4Proto(unix.IPPROTO_UDP), nftPort(offSrcPort, 68), nftPort(offDstPort, 67), accept)
	add(&in, "dhcpv4", nftNFProto(unix.NFPROTO_IPV4), nftL4Proto(unix.IPPROTO_UDP), nftPort(offSrcPort, 67), nftPort(offDstPort, 68), accept)
	add(&out, "dhcpv6", nftNFProto(unix.NFPROTO_IPV6), nftIP6Prefix(offIP6Src, fwLinkLocal6), nftL4Proto(unix.IPPROTO_UDP), nftPort(offSrcPort, 546), nftPort(offDstPort, 547), accept)
	add(&in, "dhcpv6", nftNFProto(unix.NFPROTO_IPV6), nftIP6Prefix(offIP6Src, fwLinkLocal6), nftL4Proto(unix.IPPROTO_UDP), nftPort(offSrcPort, 547), nftPort(offDstPort, 546), accept)

	// 5. Invalid packets. After NDP: conntrack calls a redirect invalid.
	add(&out, "invalid", nftCtState(expr.CtStateBitINVALID), drop)
	add(&in, "invalid", nftCtState(expr.CtStateBitINVALID), drop)

	// 6. The WireGuard socket to its endpoints, and the replies.
	if len(r.Endpoints) > 0 {
		add(&out, "endpoint ipv4", nftMark(r.Mark), nftNFProto(unix.NFPROTO_IPV4), nftL4Proto(unix.IPPROTO_UDP), nftAddrPortLookup(offIP4Dst, offDstPort, fwSetEndpoint4), accept)
		add(&out, "endpoint ipv6", nftMark(r.Mark), nftNFProto(unix.NFPROTO_IPV6), nftL4Proto(unix.IPPROTO_UDP), nftAddrPortLookup(offIP6Dst, offDstPort, fwSetEndpoint6), accept)
		add(&in, "endpoint ipv4", nftNFProto(unix.NFPROTO_IPV4), nftL4Proto(unix.IPPROTO_UDP), nftAddrPortLookup(offIP4Src, offSrcPort, fwSetEndpoint4), established, accept)
		add(&in, "endpoint ipv6", nftNFProto(unix.NFPROTO_IPV6), nftL4Proto(unix.IPPROTO_UDP), nftAddrPortLookup(offIP6Src, offSrcPort, fwSetEndpoint6), established, accept)
	}

	// 7. Resolving the endpoint's host name, from the marked sockets only.
	if r.ResolveEndpoint {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			name := "resolve endpoint " + fwProtoName(proto)
			add(&out, name, nftMark(r.Mark), nftL4Proto(proto), nftPort(offDstPort, 53), accept)
			add(&in, name, nftL4Proto(proto), nftPort(offSrcPort, 53), established, accept)
		}
	}

	if r.Connected {
		tun := nftIfname(expr.MetaKeyOIFNAME, r.TUN)
		// 8. The tunnel's DNS servers, over the tunnel only.
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			add(&out, "tunnel dns ipv4 "+fwProtoName(proto), tun, nftNFProto(unix.NFPROTO_IPV4), nftL4Proto(proto), nftPort(offDstPort, 53), nftAddrLookup(offIP4Dst, fwSetDNS4), accept)
			if r.TunnelIPv6 {
				add(&out, "tunnel dns ipv6 "+fwProtoName(proto), tun, nftNFProto(unix.NFPROTO_IPV6), nftL4Proto(proto), nftPort(offDstPort, 53), nftAddrLookup(offIP6Dst, fwSetDNS6), accept)
			}
		}
	}

	// 9. Port 53 anywhere else.
	add(&out, "dns elsewhere tcp", nftL4Proto(unix.IPPROTO_TCP), nftPort(offDstPort, 53), nftCounter(), nftRejectTCP())
	add(&out, "dns elsewhere udp", nftL4Proto(unix.IPPROTO_UDP), nftPort(offDstPort, 53), nftCounter(), nftRejectICMPX())

	// 10. The tunnel.
	if r.Connected {
		var family []expr.Any
		if !r.TunnelIPv6 {
			family = nftNFProto(unix.NFPROTO_IPV4)
		}
		add(&out, "tunnel", nftIfname(expr.MetaKeyOIFNAME, r.TUN), family, accept)
		add(&in, "tunnel", nftIfname(expr.MetaKeyIIFNAME, r.TUN), family, replies, accept)
	}

	// 11. The LAN.
	if r.AllowLAN {
		for _, pfx := range fwLANPrefixes {
			if pfx.Addr().Is4() {
				add(&out, "lan "+pfx.String(), nftNFProto(unix.NFPROTO_IPV4), nftIP4Prefix(offIP4Dst, pfx), accept)
				add(&in, "lan "+pfx.String(), nftNFProto(unix.NFPROTO_IPV4), nftIP4Prefix(offIP4Src, pfx), accept)
			} else {
				add(&out, "lan "+pfx.String(), nftNFProto(unix.NFPROTO_IPV6), nftIP6Prefix(offIP6Dst, pfx), accept)
				add(&in, "lan "+pfx.String(), nftNFProto(unix.NFPROTO_IPV6), nftIP6Prefix(offIP6Src, pfx), accept)
			}
		}
		for _, pfx := range fwLANMulticast {
			if pfx.Addr().Is4() {
				add(&out, "lan multicast "+pfx.String(), nftNFProto(unix.NFPROTO_IPV4), nftIP4Prefix(offIP4Dst, pfx), accept)
			} else {
				add(&out, "lan multicast "+pfx.String(), nftNFProto(unix.NFPROTO_IPV6), nftIP6Prefix(offIP6Dst, pfx), accept)
			}
		}
	}

	// 12. Everything else: fail at once going out; the policy drops coming in.
	add(&out, "reject tcp", nftL4Proto(unix.IPPROTO_TCP), nftCounter(), nftRejectTCP())
	add(&out, "reject", nftCounter(), nftRejectICMPX())

	filter, dropAll := *nftables.ChainPriorityFilter, nftables.ChainPolicyDrop
	p.chains = []fwChainPlan{
		{name: "input", hook: *nftables.ChainHookInput, priority: filter, policy: dropAll, rules: in},
		{name: "output", hook: *nftables.ChainHookOutput, priority: filter, policy: dropAll, rules: out},
		{name: "forward", hook: *nftables.ChainHookForward, priority: filter, policy: dropAll},
	}

	// The mark of warren's flows, for the reverse-path check of their
	// replies. Mark 0 would be every unmarked flow: then nothing.
	if r.Mark != 0 {
		mangle, acceptAll := *nftables.ChainPriorityMangle, nftables.ChainPolicyAccept
		p.chains = append(p.chains,
			fwChainPlan{name: "mark-save", hook: *nftables.ChainHookPostrouting, priority: mangle, policy: acceptAll,
				rules: []fwRulePlan{{comment: "save mark", exprs: nftSaveMark(r.Mark)}}},
			fwChainPlan{name: "mark-restore", hook: *nftables.ChainHookPrerouting, priority: mangle, policy: acceptAll,
				rules: []fwRulePlan{{comment: "restore mark", exprs: nftRestoreMark(r.Mark)}}},
		)
	}
	return p, nil
}

// fwTable is the table, as the nftables package names it.
func fwTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

func fwSortedUnique(s [][]byte) [][]byte {
	slices.SortFunc(s, bytes.Compare)
	return slices.CompactFunc(s, bytes.Equal)
}

func fwProtoName(proto byte) string {
	if proto == unix.IPPROTO_TCP {
		return "tcp"
	}
	return "udp"
}

// The expression builders below each produce one nft match, written out in
// nft's syntax in their comments. They load into register 1, except where a
// concatenation needs the registers after it.

// nftCmpEq compares register 1 with data.
func nftCmpEq(data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}
}

// nftMeta is "meta KEY data".
func nftMeta(key expr.MetaKey, data []byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, nftCmpEq(data)}
}

// nftNFProto is "meta nfproto ipv4|ipv6".
func nftNFProto(family byte) []expr.Any { return nftMeta(expr.MetaKeyNFPROTO, []byte{family}) }

// nftL4Proto is "meta l4proto tcp|udp|...".
func nftL4Proto(proto byte) []expr.Any { return nftMeta(expr.MetaKeyL4PROTO, []byte{proto}) }

// nftIfindex is "iif|oif INDEX". Loopback is index 1 in every network namespace.
func nftIfindex(key expr.MetaKey, index uint32) []expr.Any {
	return nftMeta(key, binaryutil.NativeEndian.PutUint32(index))
}

// nftIfname is `iifname|oifname "NAME"`.
func nftIfname(key expr.MetaKey, name string) []expr.Any {
	return nftMeta(key, []byte(name+"\x00"))
}

// nftMark is "meta mark MARK".
func nftMark(mark uint32) []expr.Any {
	return nftMeta(expr.MetaKeyMARK, binaryutil.NativeEndian.PutUint32(mark))
}

// nftSaveMark is "meta mark MARK ct mark set meta mark".
func nftSaveMark(mark uint32) []expr.Any {
	return append(nftMark(mark), &expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true})
}

// nftRestoreMark is "ct mark MARK meta mark set ct mark".
func nftRestoreMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		nftCmpEq(binaryutil.NativeEndian.PutUint32(mark)),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// nftCtState is "ct state BITS": any of them.
func nftCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            4,
			Mask:           binaryutil.NativeEndian.PutUint32(bits),
			Xor:            make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// Offsets of addresses in the IPv4 and IPv6 headers, and of ports in the
// TCP and UDP headers.
const (
	offIP4Src  = 12
	offIP4Dst  = 16
	offIP6Src  = 8
	offIP6Dst  = 24
	offSrcPort = 0
	offDstPort = 2
)

// nftPort is "th sport|dport PORT"; it follows an l4proto match for TCP or UDP.
func nftPort(offset uint32, p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		nftCmpEq(binaryutil.BigEndian.PutUint16(p)),
	}
}

// nftIP4Prefix is "ip saddr|daddr PREFIX".
func nftIP4Prefix(offset uint32, pfx netip.Prefix) []expr.Any {
	return nftPrefix(offset, 4, pfx)
}

// nftIP6Prefix is "ip6 saddr|daddr PREFIX".
func nftIP6Prefix(offset uint32, pfx netip.Prefix) []expr.Any {
	return nftPrefix(offset, 16, pfx)
}

// nftPrefix matches the size-byte address at offset in the network header
// against pfx.
func nftPrefix(offset, size uint32, pfx netip.Prefix) []expr.Any {
	pfx = pfx.Masked()
	exprs := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size}}
	if bits := pfx.Bits(); bits < int(size)*8 {
		mask := make([]byte, size)
		for i := range bits {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)})
	}
	return append(exprs, nftCmpEq(pfx.Addr().AsSlice()))
}

// nftAddrLookup is "ip|ip6 daddr @SET".
func nftAddrLookup(offset uint32, set fwSetRef) []expr.Any {
	size := uint32(4)
	if offset == offIP6Dst {
		size = 16
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Lookup{SourceRegister: 1, SetName: set.name, SetID: set.id},
	}
}

// nftAddrPortLookup is "ip|ip6 saddr|daddr . udp sport|dport @SET".
func nftAddrPortLookup(addrOffset, portOffset uint32, set fwSetRef) []expr.Any {
	size, portReg := uint32(4), uint32(unix.NFT_REG32_01)
	if addrOffset == offIP6Src || addrOffset == offIP6Dst {
		// An IPv6 address fills the four 32-bit registers of register 1.
		size, portReg = 16, unix.NFT_REG32_04
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOffset, Len: size},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: portOffset, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.name, SetID: set.id},
	}
}

// nftICMPv6Type is "icmpv6 type TYPE ip6 hoplimit 255".
func nftICMPv6Type(typ byte) []expr.Any {
	return slices.Concat(
		nftNFProto(unix.NFPROTO_IPV6),
		nftL4Proto(unix.IPPROTO_ICMPV6),
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			nftCmpEq([]byte{typ}),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
			nftCmpEq([]byte{255}),
		},
	)
}

// nftCounter is "counter".
func nftCounter() []expr.Any { return []expr.Any{&expr.Counter{}} }

// nftRejectTCP is "reject with tcp reset".
func nftRejectTCP() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
}

// nftRejectICMPX is "reject with icmpx admin-prohibited".
func nftRejectICMPX() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
}
