package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
	"github.com/warren-vpn/warren/state"
)

// A reload with a bad config changes nothing: the tunnel stays up and its
// flows carry on. A reload with a good one reconnects with it, through the
// listeners that were open all along.
func TestReload(t *testing.T) {
	first := startDemo(t, demo.Options{})
	path := writeFile(t, "wg0.conf", wgQuick(first.ClientConfig()))
	a := startTestApp(t, first.ClientConfig(), func(o *appOptions) {
		o.load = func() ([]*config.Config, error) { return loadConfigs([]string{path}, o.log) }
	})
	connect(t, a)
	c := socksClient(t, a.socks5Addr.String())
	body := startDownload(t, c)
	before := a.machine.Current()

	// A bad config: rejected, with the file and line; nothing changes.
	rewrite(t, path, wgQuick(first.ClientConfig())+"\nBogus = 1\n")
	s, err := a.reload(context.Background())
	if err == nil || !strings.Contains(err.Error(), path+":") || !strings.Contains(err.Error(), "Bogus") {
		t.Fatalf("reload of a bad config: %v, want an error naming %s and the key", err, path)
	}
	if s != before || a.machine.Current() != before {
		t.Errorf("after a rejected reload: %v, want %v unchanged", a.machine.Current(), before)
	}
	if _, err := io.CopyN(io.Discard, body, 1<<20); err != nil {
		t.Errorf("the download was disturbed by a rejected reload: %v", err)
	}

	// A good config, for another server: warren reconnects to it, and the
	// same SOCKS5 listener serves through the new tunnel.
	second := startDemo(t, demo.Options{})
	rewrite(t, path, wgQuick(second.ClientConfig()))
	if _, err := a.reload(context.Background()); err != nil {
		t.Fatalf("reload: %v", err)
	}
	wantCut(t, body)
	want := fmt.Sprintf("127.0.0.1:%d", second.Port())
	s = waitState(t, a, 10*time.Second, func(s state.Snapshot) bool {
		return s.State == state.Connected && s.Seq > before.Seq
	})
	if s.Endpoint != want {
		t.Errorf("connected to %s after the reload, want the new server %s", s.Endpoint, want)
	}
	get(t, c, "http://"+demo.Name+"/")
	first.Close() // the old server is gone: the page can only come through the new tunnel
	get(t, c, "http://"+demo.Name+"/")
}

func rewrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
