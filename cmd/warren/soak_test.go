//go:build soak

package main

// The soak test: many clients opening and closing SOCKS5 connections, UDP
// associations and DNS queries for minutes, across forced reconnects, with
// every answer checked; at the end warren's goroutines, open files and heap
// must be back at their baseline. It is not part of the default test run
// (the build tag keeps it out): run it with `make soak`, or
//
//	go test -tags soak -run TestSoak -v -timeout 60m ./cmd/warren -soak.duration 5m

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	xproxy "golang.org/x/net/proxy"

	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

var (
	soakDuration  = flag.Duration("soak.duration", 3*time.Minute, "how long the soak test runs its clients")
	soakClients   = flag.Int("soak.clients", 48, "concurrent clients of the soak test")
	soakReconnect = flag.Duration("soak.reconnect", 15*time.Second, "how often the soak test forces a reconnect")
)

// soakCounts are what the clients did.
type soakCounts struct {
	tcpOK, tcpRefused, udpOK, udpRefused, dnsOK, dnsRefused atomic.Int64
	wrong                                                   atomic.Int64
	firstWrong                                              atomic.Pointer[string]
}

func (c *soakCounts) fail(format string, args ...any) {
	c.wrong.Add(1)
	msg := fmt.Sprintf(format, args...)
	c.firstWrong.CompareAndSwap(nil, &msg)
}

// resources are the figures that must come back to their baseline.
type resources struct {
	goroutines int
	fds        int
	heap       uint64 // HeapInuse after a GC
}

func measure(t *testing.T) resources {
	t.Helper()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return resources{goroutines: runtime.NumGoroutine(), fds: len(fds), heap: ms.HeapInuse}
}

func TestSoak(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	a := startTestApp(t, srv.ClientConfig(), allFrontends)
	connect(t, a)
	socksAddr, dnsAddr := a.socks5Addr.String(), a.dnsAddr.String()

	var counts soakCounts
	// One round of each, so that what is made once (the resolver's cache,
	// pools) is in the baseline.
	rng := rand.New(rand.NewPCG(1, 2))
	soakTCP(socksAddr, rng, &counts)
	soakUDP(socksAddr, rng, &counts)
	soakDNS(dnsAddr, &counts)
	if n := counts.wrong.Load(); n > 0 {
		t.Fatalf("warm-up: %s", *counts.firstWrong.Load())
	}
	base := measure(t)
	t.Logf("baseline: %d goroutines, %d open files, heap %.1f MiB", base.goroutines, base.fds, float64(base.heap)/(1<<20))

	ctx, cancel := context.WithTimeout(context.Background(), *soakDuration)
	defer cancel()
	var wg sync.WaitGroup
	for i := range *soakClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for ctx.Err() == nil {
				switch rng.IntN(3) {
				case 0:
					soakTCP(socksAddr, rng, &counts)
				case 1:
					soakUDP(socksAddr, rng, &counts)
				default:
					soakDNS(dnsAddr, &counts)
				}
			}
		}()
	}
	reconnects := 0
	tick := time.NewTicker(*soakReconnect)
	for done := false; !done; {
		select {
		case <-tick.C:
			if _, err := a.machine.Reconnect(context.Background()); err != nil {
				t.Errorf("reconnect: %v", err)
			}
			reconnects++
		case <-ctx.Done():
			done = true
		}
	}
	tick.Stop()
	wg.Wait()
	waitState(t, a, 30*time.Second, is(state.Connected))

	// Goroutines and sockets end a moment after their flows, and closed TCP
	// connections stay in TIME_WAIT (and in memory) for a minute in the
	// demo server's stack, which shares this heap: wait for that, at most
	// 90 s.
	limit := base.heap + base.heap/4 + 4<<20
	var end resources
	settle := time.Now()
	for range 450 {
		end = measure(t)
		if end.goroutines <= base.goroutines+2 && end.fds <= base.fds+2 && end.heap <= limit {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("settled in %v", time.Since(settle).Round(time.Second))
	t.Logf("after %v, %d clients, %d forced reconnects: TCP %d answered, %d refused; UDP %d answered, %d refused; DNS %d answered, %d refused; %d wrong",
		*soakDuration, *soakClients, reconnects,
		counts.tcpOK.Load(), counts.tcpRefused.Load(), counts.udpOK.Load(), counts.udpRefused.Load(),
		counts.dnsOK.Load(), counts.dnsRefused.Load(), counts.wrong.Load())
	t.Logf("end: %d goroutines (baseline %d), %d open files (baseline %d), heap %.1f MiB (baseline %.1f MiB)",
		end.goroutines, base.goroutines, end.fds, base.fds, float64(end.heap)/(1<<20), float64(base.heap)/(1<<20))

	if n := counts.wrong.Load(); n > 0 {
		t.Errorf("%d answers were wrong; the first: %s", n, *counts.firstWrong.Load())
	}
	if counts.tcpOK.Load() == 0 || counts.udpOK.Load() == 0 || counts.dnsOK.Load() == 0 {
		t.Errorf("a kind of flow never succeeded: the soak did not exercise it")
	}
	if reconnects == 0 {
		t.Errorf("no reconnect was forced: run longer than -soak.reconnect")
	}
	if end.goroutines > base.goroutines+2 {
		t.Errorf("goroutines: %d at the end, %d at the baseline", end.goroutines, base.goroutines)
	}
	if end.fds > base.fds+2 {
		t.Errorf("open files: %d at the end, %d at the baseline", end.fds, base.fds)
	}
	if end.heap > limit {
		t.Errorf("heap in use: %.1f MiB at the end, %.1f MiB at the baseline (limit %.1f MiB)",
			float64(end.heap)/(1<<20), float64(base.heap)/(1<<20), float64(limit)/(1<<20))
	}
}

// soakTCP fetches /bytes/N from the demo server through SOCKS5 by name and
// checks every byte. A refusal or a cut (a reconnect) is counted as such;
// an answer with wrong content is wrong.
func soakTCP(socksAddr string, rng *rand.Rand, c *soakCounts) {
	n := 1 + rng.Int64N(64<<10)
	d, err := xproxy.SOCKS5("tcp", socksAddr, nil, &net.Dialer{Timeout: 5 * time.Second})
	if err != nil {
		c.fail("SOCKS5 dialer: %v", err)
		return
	}
	tr := &http.Transport{DialContext: d.(xproxy.ContextDialer).DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://%s/bytes/%d", demo.Name, n))
	if err != nil {
		c.tcpRefused.Add(1)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		c.tcpRefused.Add(1) // cut by a reconnect
	case resp.StatusCode != http.StatusOK:
		c.fail("GET /bytes/%d: %s", n, resp.Status)
	default:
		want, _ := io.ReadAll(demo.Bytes(n))
		if !bytes.Equal(body, want) {
			c.fail("GET /bytes/%d: %d bytes that are not the ones served", n, len(body))
			return
		}
		c.tcpOK.Add(1)
	}
}

// soakUDP opens a UDP association, sends a few datagrams to the demo's
// echo port by name, and checks each reply; closing the control
// connection ends the association.
func soakUDP(socksAddr string, rng *rand.Rand, c *soakCounts) {
	ctrl, err := net.DialTimeout("tcp", socksAddr, 5*time.Second)
	if err != nil {
		c.fail("SOCKS5: %v", err)
		return
	}
	defer ctrl.Close()
	ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	ctrl.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	reply := make([]byte, 10)
	if _, err := io.ReadFull(ctrl, reply[:2]); err != nil {
		c.fail("SOCKS5 greeting: %v", err)
		return
	}
	if _, err := io.ReadFull(ctrl, reply[:4]); err != nil {
		c.udpRefused.Add(1) // closed while the tunnel was being replaced
		return
	}
	if reply[1] != 0 {
		c.udpRefused.Add(1)
		return
	}
	if reply[3] != 1 {
		c.fail("UDP ASSOCIATE: relay address type %d, want IPv4", reply[3])
		return
	}
	if _, err := io.ReadFull(ctrl, reply[4:10]); err != nil {
		c.fail("UDP ASSOCIATE reply: %v", err)
		return
	}
	relay := &net.UDPAddr{IP: net.IP(bytes.Clone(reply[4:8])), Port: int(binary.BigEndian.Uint16(reply[8:10]))}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		c.fail("UDP socket: %v", err)
		return
	}
	defer conn.Close()
	header := append([]byte{0, 0, 0, 3, byte(len(demo.Name))}, demo.Name...)
	header = binary.BigEndian.AppendUint16(header, demo.EchoPort)
	buf := make([]byte, 2048)
	for range 1 + rng.IntN(4) {
		payload := make([]byte, 1+rng.IntN(1200))
		for i := range payload {
			payload[i] = byte(rng.Uint32())
		}
		conn.WriteToUDP(append(bytes.Clone(header), payload...), relay)
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := conn.Read(buf)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			c.udpRefused.Add(1) // dropped: the tunnel was down
			return
		case err != nil:
			c.fail("UDP read: %v", err)
			return
		case n < 10 || buf[3] != 1 || !bytes.Equal(buf[10:n], payload):
			c.fail("UDP echo: %d bytes that are not what was sent", n)
			return
		}
	}
	c.udpOK.Add(1)
}

// soakDNS asks warren's DNS server for the demo's A record: the answer
// must be the demo server's address, or REFUSED while the tunnel is down.
func soakDNS(dnsAddr string, c *soakCounts) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(demo.Name), dns.TypeA)
	client := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	r, _, err := client.Exchange(m, dnsAddr)
	switch {
	case err != nil:
		c.fail("DNS: %v", err)
	case r.Rcode == dns.RcodeRefused:
		c.dnsRefused.Add(1)
	case r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1:
		c.fail("DNS: %s with %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
	default:
		a, ok := r.Answer[0].(*dns.A)
		if !ok || a.A.String() != demo.ServerIPv4.String() {
			c.fail("DNS: answer %v, want %v", r.Answer[0], demo.ServerIPv4)
			return
		}
		c.dnsOK.Add(1)
	}
}
