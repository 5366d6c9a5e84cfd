package control

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warren-vpn/warren/state"
)

// Metrics are warren's Prometheus metrics, on a registry of their own (never
// the global one), with the Go runtime's and the process's metrics besides:
//
//	warren_state{state}                          1 for the current state, 0 for the other four
//	warren_transitions_total{from,to,cause}      state changes, and retries within connecting; cause "none" for none
//	warren_connect_attempts_total                connection attempts started
//	warren_handshake_age_seconds                 seconds since the last handshake; absent before the first
//	warren_tunnel_received_bytes                 counters of the tunnel that is up (see SetStats)
//	warren_tunnel_sent_bytes
//	warren_flows_live                            flows open now
//	warren_flows_total{frontend,outcome}         flows by front-end: "accepted" or why refused
//	warren_dns_queries_total{rcode}              queries answered by the DNS server
//	warren_dns_cache_hits_total                  of which answered from the cache
//
// Every method is safe for concurrent use, and does nothing on a nil
// *Metrics, so that callers need no nil checks.
type Metrics struct {
	reg          *prometheus.Registry
	state        *prometheus.GaugeVec
	transitions  *prometheus.CounterVec
	attempts     prometheus.Counter
	flows        *prometheus.CounterVec
	dnsQueries   *prometheus.CounterVec
	dnsCacheHits prometheus.Counter
	stats        *statsCollector
}

// states are the values of the state label, all present at all times.
var states = []state.State{state.Disconnected, state.Connecting, state.Connected, state.Disconnecting, state.Error}

// NewMetrics returns the metrics, registered, with warren_state at
// disconnected.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "warren_state",
			Help: "1 for the tunnel's current state, 0 for the others.",
		}, []string{"state"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_transitions_total",
			Help: "State transitions, and retries within connecting, by the cause of the new state (none for none).",
		}, []string{"from", "to", "cause"}),
		attempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_connect_attempts_total",
			Help: "Connection attempts started.",
		}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_flows_total",
			Help: "Flows by front-end and outcome: accepted, or the reason they were refused.",
		}, []string{"frontend", "outcome"}),
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warren_dns_queries_total",
			Help: "Queries answered by the DNS server, by response code.",
		}, []string{"rcode"}),
		dnsCacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warren_dns_cache_hits_total",
			Help: "Queries the DNS server answered from its cache.",
		}),
		stats: newStatsCollector(),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.state, m.transitions, m.attempts, m.flows, m.dnsQueries, m.dnsCacheHits, m.stats,
	)
	m.setState(state.Disconnected)
	return m
}

func (m *Metrics) setState(cur state.State) {
	for _, s := range states {
		v := 0.0
		if s == cur {
			v = 1
		}
		m.state.WithLabelValues(s.String()).Set(v)
	}
}

// Watch follows mach's transitions until ctx ends or mach closes the
// subscription: it keeps warren_state, counts warren_transitions_total
// (comparing consecutive snapshots: a change of state, or a new attempt
// within connecting) and warren_connect_attempts_total (each new attempt
// number seen in connecting, the current one included). A snapshot the
// subscription dropped because Watch fell behind is not counted.
func (m *Metrics) Watch(ctx context.Context, mach Machine) {
	if m == nil {
		return
	}
	snaps, cancel := mach.Subscribe()
	defer cancel()
	prev := mach.Current()
	m.setState(prev.State)
	if prev.State == state.Connecting {
		m.attempts.Inc()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case s, ok := <-snaps:
			if !ok {
				return
			}
			if s.Seq <= prev.Seq {
				continue // seen already, through Current
			}
			m.observe(prev, s)
			prev = s
		}
	}
}

// observe counts the step from snapshot prev to snapshot s.
func (m *Metrics) observe(prev, s state.Snapshot) {
	newAttempt := s.State == state.Connecting && (prev.State != state.Connecting || prev.Attempt != s.Attempt)
	if s.State == prev.State && !newAttempt {
		return
	}
	m.setState(s.State)
	cause := string(s.Cause)
	if cause == "" {
		cause = "none"
	}
	m.transitions.WithLabelValues(prev.State.String(), s.State.String(), cause).Inc()
	if newAttempt {
		m.attempts.Inc()
	}
}

// SetStats sets what the scrape-time metrics read: warren_handshake_age_seconds
// (absent before the first handshake, and while no tunnel is up),
// warren_tunnel_received_bytes and warren_tunnel_sent_bytes, and
// warren_flows_live. Either may be nil, and its metrics are then absent.
//
// The byte counters are those of the tunnel device that is up. A new device
// (after a reconnect) starts again from 0, which Prometheus's rate() and
// increase() treat as a counter reset, as they should.
func (m *Metrics) SetStats(stats func() TunnelStats, flows func() int) {
	if m == nil {
		return
	}
	m.stats.funcs.Store(&statsFuncs{stats: stats, flows: flows})
}

// Flow counts one flow of a front-end ("socks5", "socks5-udp", "http",
// "forward", "expose"): outcome is "accepted", or why the flow was refused
// ("blocked", "resolve", "dial", "auth", ...). Keep both to a small fixed
// set: each pair is a time series.
func (m *Metrics) Flow(frontend, outcome string) {
	if m == nil {
		return
	}
	m.flows.WithLabelValues(frontend, outcome).Inc()
}

// DNSQuery counts one query answered by the DNS server, by rcode as
// dns.RcodeToString gives it ("NOERROR", "REFUSED", ...), and whether it was
// answered from the cache.
func (m *Metrics) DNSQuery(rcode string, cached bool) {
	if m == nil {
		return
	}
	m.dnsQueries.WithLabelValues(rcode).Inc()
	if cached {
		m.dnsCacheHits.Inc()
	}
}

// Handler serves the metrics in Prometheus's exposition formats. On a nil
// *Metrics it answers 404.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeText(w, http.StatusNotFound, "metrics are off")
		})
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// statsCollector reads the tunnel's statistics at scrape time.
type statsCollector struct {
	funcs        atomic.Pointer[statsFuncs]
	handshakeAge *prometheus.Desc
	received     *prometheus.Desc
	sent         *prometheus.Desc
	flowsLive    *prometheus.Desc
}

type statsFuncs struct {
	stats func() TunnelStats
	flows func() int
}

func newStatsCollector() *statsCollector {
	return &statsCollector{
		handshakeAge: prometheus.NewDesc("warren_handshake_age_seconds",
			"Seconds since the last handshake of the tunnel that is up; absent before the first.", nil, nil),
		received: prometheus.NewDesc("warren_tunnel_received_bytes",
			"Bytes received by the tunnel that is up; a new tunnel starts again from 0.", nil, nil),
		sent: prometheus.NewDesc("warren_tunnel_sent_bytes",
			"Bytes sent by the tunnel that is up; a new tunnel starts again from 0.", nil, nil),
		flowsLive: prometheus.NewDesc("warren_flows_live",
			"Flows open now through the front-ends.", nil, nil),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.handshakeAge
	ch <- c.received
	ch <- c.sent
	ch <- c.flowsLive
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.funcs.Load()
	if f == nil {
		return
	}
	if f.stats != nil {
		ts := f.stats()
		if !ts.LastHandshake.IsZero() {
			age := max(time.Since(ts.LastHandshake), 0).Seconds()
			ch <- prometheus.MustNewConstMetric(c.handshakeAge, prometheus.GaugeValue, age)
		}
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(ts.RxBytes))
		ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(ts.TxBytes))
	}
	if f.flows != nil {
		ch <- prometheus.MustNewConstMetric(c.flowsLive, prometheus.GaugeValue, float64(f.flows()))
	}
}
