package control

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/warren-vpn/warren/state"
)

// scrape gets /metrics and parses it as Prometheus text.
func scrape(t *testing.T, ts *testServer) map[string]*dto.MetricFamily {
	t.Helper()
	body := ts.mustGet(t, "/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return mfs
}

// value returns the value of the metric name with labels (name=value
// pairs), and whether it is there.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		for _, l := range m.GetLabel() {
			if want[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func wantValue(t *testing.T, mfs map[string]*dto.MetricFamily, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(mfs, name, labels...)
	if !ok {
		t.Errorf("%s%v missing", name, labels)
	} else if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func wantStates(t *testing.T, mfs map[string]*dto.MetricFamily, current string) {
	t.Helper()
	for _, s := range states {
		want := 0.0
		if s.String() == current {
			want = 1
		}
		wantValue(t, mfs, want, "warren_state", "state", s.String())
	}
}

// The metrics page, parsed, shows the state, the transitions and attempts
// of a real machine, the statistics, and the counts of flows and queries.
func TestMetricsPage(t *testing.T) {
	m := newRealMachine(t)
	metrics := NewMetrics()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { metrics.Watch(ctx, m) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	ts := serveUnix(t, &Server{Machine: m, Metrics: metrics})

	mfs := scrape(t, ts)
	wantStates(t, mfs, "disconnected")
	wantValue(t, mfs, 0, "warren_connect_attempts_total")
	for _, name := range []string{"warren_handshake_age_seconds", "warren_tunnel_received_bytes", "warren_flows_live"} {
		if _, ok := mfs[name]; ok {
			t.Errorf("%s present before SetStats", name)
		}
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}

	if _, err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "warren_state connected", func() bool {
		v, _ := value(scrape(t, ts), "warren_state", "state", "connected")
		return v == 1
	})
	if _, err := m.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "warren_state disconnected", func() bool {
		v, _ := value(scrape(t, ts), "warren_state", "state", "disconnected")
		return v == 1
	})

	var stats TunnelStats
	var mu sync.Mutex
	metrics.SetStats(func() TunnelStats {
		mu.Lock()
		defer mu.Unlock()
		return stats
	}, func() int { return 3 })
	metrics.Flow("socks5", "accepted")
	metrics.Flow("socks5", "accepted")
	metrics.Flow("socks5", "blocked")
	metrics.Flow("http", "dial")
	metrics.DNSQuery("NOERROR", false)
	metrics.DNSQuery("NOERROR", true)
	metrics.DNSQuery("REFUSED", false)

	mfs = scrape(t, ts)
	wantStates(t, mfs, "disconnected")
	wantValue(t, mfs, 1, "warren_transitions_total", "from", "disconnected", "to", "connecting", "cause", "none")
	wantValue(t, mfs, 1, "warren_transitions_total", "from", "connecting", "to", "connected", "cause", "none")
	wantValue(t, mfs, 1, "warren_transitions_total", "from", "connected", "to", "disconnecting", "cause", "none")
	wantValue(t, mfs, 1, "warren_transitions_total", "from", "disconnecting", "to", "disconnected", "cause", "none")
	if n := len(mfs["warren_transitions_total"].GetMetric()); n != 4 {
		t.Errorf("%d transition series, want 4", n)
	}
	wantValue(t, mfs, 1, "warren_connect_attempts_total")
	wantValue(t, mfs, 2, "warren_flows_total", "frontend", "socks5", "outcome", "accepted")
	wantValue(t, mfs, 1, "warren_flows_total", "frontend", "socks5", "outcome", "blocked")
	wantValue(t, mfs, 1, "warren_flows_total", "frontend", "http", "outcome", "dial")
	wantValue(t, mfs, 2, "warren_dns_queries_total", "rcode", "NOERROR")
	wantValue(t, mfs, 1, "warren_dns_queries_total", "rcode", "REFUSED")
	wantValue(t, mfs, 1, "warren_dns_cache_hits_total")
	wantValue(t, mfs, 0, "warren_tunnel_received_bytes")
	wantValue(t, mfs, 3, "warren_flows_live")
	if _, ok := mfs["warren_handshake_age_seconds"]; ok {
		t.Error("warren_handshake_age_seconds present before the first handshake")
	}
	if mf := mfs["warren_tunnel_sent_bytes"]; mf.GetType() != dto.MetricType_COUNTER {
		t.Errorf("warren_tunnel_sent_bytes is a %v", mf.GetType())
	}

	mu.Lock()
	stats = TunnelStats{LastHandshake: time.Now().Add(-10 * time.Second), RxBytes: 1234, TxBytes: 5678}
	mu.Unlock()
	mfs = scrape(t, ts)
	wantValue(t, mfs, 1234, "warren_tunnel_received_bytes")
	wantValue(t, mfs, 5678, "warren_tunnel_sent_bytes")
	if age, ok := value(mfs, "warren_handshake_age_seconds"); !ok || age < 10 || age > 70 {
		t.Errorf("warren_handshake_age_seconds = %v, %v; want about 10", age, ok)
	}
}

// Watch counts retries within connecting as transitions and attempts, and
// counts the attempt under way when it starts.
func TestMetricsWatch(t *testing.T) {
	fm := newFakeMachine(state.Snapshot{State: state.Connecting, Attempt: 0})
	metrics := NewMetrics()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		metrics.Watch(ctx, fm)
		close(done)
	}()
	ts := serveUnix(t, &Server{Machine: fm, Metrics: metrics})
	waitFor(t, 5*time.Second, "Watch subscribes", func() bool {
		fm.mu.Lock()
		defer fm.mu.Unlock()
		return len(fm.subs) == 1
	})
	fm.publish(state.Snapshot{State: state.Connecting, Attempt: 1, Cause: state.CauseHandshakeTimeout})
	fm.publish(state.Snapshot{State: state.Connecting, Attempt: 1, Cause: state.CauseHandshakeTimeout, Detail: "more detail"}) // no new attempt
	fm.publish(state.Snapshot{State: state.Error, Cause: state.CauseTunnelDevice})
	waitFor(t, 5*time.Second, "warren_state error", func() bool {
		v, _ := value(scrape(t, ts), "warren_state", "state", "error")
		return v == 1
	})
	mfs := scrape(t, ts)
	wantStates(t, mfs, "error")
	wantValue(t, mfs, 2, "warren_connect_attempts_total")
	wantValue(t, mfs, 1, "warren_transitions_total", "from", "connecting", "to", "connecting", "cause", "handshake-timeout")
	wantValue(t, mfs, 1, "warren_transitions_total", "from", "connecting", "to", "error", "cause", "tunnel-device")

	// Watch ends when the machine closes the subscription, as well as with
	// ctx.
	fm.closeSubscriptions()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not end when the subscription closed")
	}
	cancel()
}

// A nil *Metrics does nothing, and /metrics answers 404.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.Flow("socks5", "accepted")
	m.DNSQuery("NOERROR", true)
	m.SetStats(nil, nil)
	m.Watch(context.Background(), newFakeMachine(state.Snapshot{}))
	ts := serveUnix(t, &Server{Machine: newFakeMachine(state.Snapshot{})})
	if code, _, body := ts.do(t, http.MethodGet, "/metrics", ""); code != http.StatusNotFound || body != "metrics are off\n" {
		t.Errorf("GET /metrics: %d %q", code, body)
	}
}
