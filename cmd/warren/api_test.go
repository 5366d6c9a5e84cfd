package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/warren-vpn/warren/control"
	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

// unixHTTP is an HTTP client of a unix socket.
func unixHTTP(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

func apiDo(t *testing.T, c *http.Client, method, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://warren"+path, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func apiStatus(t *testing.T, c *http.Client) control.Status {
	t.Helper()
	code, body := apiDo(t, c, http.MethodGet, "/v1/status")
	var st control.Status
	if err := json.Unmarshal(body, &st); code != 200 || err != nil {
		t.Fatalf("status: %d %s (%v)", code, body, err)
	}
	return st
}

// metricValue is the value of one metric on a scraped page, or -1.
func metricValue(t *testing.T, page []byte, name string, labels ...string) float64 {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	mf := mfs[name]
	if mf == nil {
		return -1
	}
next:
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if got[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return metricOf(m)
	}
	return -1
}

func metricOf(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	}
	return m.GetUntyped().GetValue()
}

// The API of a running warren, with every front-end carrying traffic: its
// status shows the tunnel and the listeners, its metrics count what the
// front-ends did, /readyz follows the tunnel, and the CLI reads it.
func TestAPIEndToEnd(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	sock := filepath.Join(t.TempDir(), "warren.sock")
	const token = "t0ken-for-the-test"
	a := startTestApp(t, srv.ClientConfig(), allFrontends, func(o *appOptions) {
		o.api = []apiSpec{{network: "unix", addr: sock}, {network: "tcp", addr: "127.0.0.1:0"}}
		o.apiToken = token
	})
	c := unixHTTP(sock)
	if code, body := apiDo(t, c, http.MethodGet, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while disconnected: %d %s", code, body)
	}

	// On TCP, the token is required.
	tcpAddr := strings.TrimPrefix(a.apiAddrs[1], "tcp:")
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + token} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+tcpAddr+"/v1/status", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusUnauthorized
		if auth == "Bearer "+token {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("TCP API with %q: %s, want %d", auth, resp.Status, want)
		}
	}

	// The event stream, from before connecting to after disconnecting.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://warren/v1/events", nil)
	events, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer events.Body.Close()
	states := make(chan []string, 1)
	go func() {
		var seen []string
		sc := bufio.NewScanner(events.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var st control.Status
			json.Unmarshal([]byte(data), &st)
			if len(seen) == 0 || seen[len(seen)-1] != st.State {
				seen = append(seen, st.State)
			}
			if st.State == "disconnected" && len(seen) > 1 {
				break
			}
		}
		states <- seen
	}()
	if code, _ := apiDo(t, c, http.MethodPost, "/v1/connect"); code != 200 {
		t.Fatalf("connect: %d", code)
	}
	waitState(t, a, 10*time.Second, is(state.Connected))

	get(t, socksClient(t, a.socks5Addr.String()), "http://"+demo.Name+"/")
	get(t, httpProxyClient(t, a.httpAddr.String(), nil), "http://"+demo.Name+"/")
	query(t, "udp", a.dnsAddr.String(), demo.Name, dns.TypeA, 0)

	st := apiStatus(t, c)
	if st.State != "connected" || st.Endpoint != fmt.Sprintf("127.0.0.1:%d", srv.Port()) || st.LastHandshake == nil ||
		st.BytesIn == 0 || st.BytesOut == 0 {
		t.Errorf("status %+v", st)
	}
	names := map[string]bool{}
	for _, l := range st.Listeners {
		names[l.Name] = true
	}
	for _, want := range []string{"socks5", "http", "dns", "api"} {
		if !names[want] {
			t.Errorf("listeners %v: no %s", st.Listeners, want)
		}
	}
	if code, body := apiDo(t, c, http.MethodGet, "/readyz"); code != 200 {
		t.Errorf("/readyz while connected: %d %s", code, body)
	}

	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"status", "--api", "unix:" + sock}, func(string) string { return "" }, &out, &errOut); code != 0 ||
		!strings.Contains(out.String(), "connected") || !strings.Contains(out.String(), st.Endpoint) {
		t.Errorf("warren status: exit %d\n%s%s", code, out.String(), errOut.String())
	}

	// Disconnect: /readyz says no within a second; a refused flow is
	// counted as blocked.
	if code, _ := apiDo(t, c, http.MethodPost, "/v1/disconnect"); code != 200 {
		t.Fatalf("disconnect: %d", code)
	}
	begin := time.Now()
	for {
		code, _ := apiDo(t, c, http.MethodGet, "/readyz")
		if code == http.StatusServiceUnavailable {
			t.Logf("/readyz 503 %v after the Disconnect command returned", time.Since(begin))
			break
		}
		if time.Since(begin) > time.Second {
			t.Fatalf("/readyz still %d a second after Disconnect", code)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := []string{"disconnected", "connecting", "connected", "disconnecting", "disconnected"}
	if seen := <-states; !slices.Equal(seen, want) {
		t.Errorf("events: %v, want %v", seen, want)
	}
	if _, err := socksClient(t, a.socks5Addr.String()).Get("http://" + demo.Name + "/"); err == nil {
		t.Error("a flow went through after Disconnect")
	}
	query(t, "udp", a.dnsAddr.String(), demo.Name, dns.TypeA, 0)

	_, page := apiDo(t, c, http.MethodGet, "/metrics")
	for _, m := range []struct {
		name   string
		labels []string
		want   func(float64) bool
	}{
		{"warren_flows_total", []string{"frontend", "socks5", "outcome", "accepted"}, func(v float64) bool { return v >= 1 }},
		{"warren_flows_total", []string{"frontend", "http", "outcome", "accepted"}, func(v float64) bool { return v >= 1 }},
		{"warren_flows_total", []string{"frontend", "socks5", "outcome", "blocked"}, func(v float64) bool { return v == 1 }},
		{"warren_dns_queries_total", []string{"rcode", "NOERROR"}, func(v float64) bool { return v == 1 }},
		{"warren_dns_queries_total", []string{"rcode", "REFUSED"}, func(v float64) bool { return v == 1 }},
		{"warren_state", []string{"state", "disconnected"}, func(v float64) bool { return v == 1 }},
		{"warren_state", []string{"state", "connected"}, func(v float64) bool { return v == 0 }},
		{"warren_transitions_total", []string{"from", "connecting", "to", "connected"}, func(v float64) bool { return v == 1 }},
	} {
		if v := metricValue(t, page, m.name, m.labels...); !m.want(v) {
			t.Errorf("%s%v = %v", m.name, m.labels, v)
		}
	}
}
