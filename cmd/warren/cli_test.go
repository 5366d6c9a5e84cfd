package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
)

// base64Key is a key as wg-quick files write it.
func base64Key(key [32]byte) string { return base64.StdEncoding.EncodeToString(key[:]) }

// wgQuick renders cfg as a wg-quick file.
func wgQuick(cfg *config.Config) string {
	var b strings.Builder
	k := base64Key
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\n", k(cfg.Interface.PrivateKey))
	for _, a := range cfg.Interface.Addresses {
		fmt.Fprintf(&b, "Address = %s\n", a)
	}
	for _, d := range cfg.Interface.DNS {
		fmt.Fprintf(&b, "DNS = %s\n", d)
	}
	for _, p := range cfg.Peers {
		fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nEndpoint = %s\n", k(p.PublicKey), p.Endpoint)
		if !p.PresharedKey.IsZero() {
			fmt.Fprintf(&b, "PresharedKey = %s\n", k(p.PresharedKey))
		}
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "AllowedIPs = %s\n", a)
		}
	}
	return b.String()
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// warrenBinary builds the command once per test run.
func warrenBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "warren-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "warren")
		// go test puts its own go first in PATH.
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// removeWarrenBinary removes what warrenBinary built, once the tests are
// done.
func removeWarrenBinary() {
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// process is a warren started by a test, with its log lines (JSON) and
// stdout collected.
type process struct {
	cmd    *exec.Cmd
	lines  chan map[string]any
	stdout chan string
	done   chan error

	mu  sync.Mutex
	raw strings.Builder // everything it wrote, stdout and stderr
}

// output returns everything the process wrote so far.
func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

func (p *process) record(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.raw.WriteString(line + "\n")
}

func startWarren(t *testing.T, args ...string) *process {
	t.Helper()
	return startWarrenIn(t, "", args...)
}

// startWarrenIn starts warren in network namespace netns ("" for the
// test's own), logging JSON.
func startWarrenIn(t *testing.T, netns string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(warrenBinary(t), args...)
	if netns != "" {
		// ip netns exec execs the command: the pid is warren's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", netns, warrenBinary(t)}, args...)...)
	}
	return startProcess(t, cmd)
}

// startProcess starts cmd, a warren, logging JSON.
func startProcess(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	// Each warren its own API socket (unless args give --api), not the
	// machine's default one.
	api := "unix:" + filepath.Join(t.TempDir(), "warren.sock")
	cmd.Env = append(os.Environ(), "WARREN_LOG_FORMAT=json", "WARREN_API="+api)
	stderr, _ := cmd.StderrPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, lines: make(chan map[string]any, 1000), stdout: make(chan string, 100), done: make(chan error, 1)}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": sc.Text()}
			}
			t.Logf("warren: %s", sc.Text())
			p.record(sc.Text())
			p.lines <- m
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.record(sc.Text())
			p.stdout <- sc.Text()
		}
	}()
	go func() {
		readers.Wait()
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill() // only the process this test started
			<-p.done
		}
	})
	return p
}

// waitLog returns the first log line for which ok holds.
func (p *process) waitLog(t *testing.T, within time.Duration, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-p.lines:
			if ok(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no such log line within %v", within)
		}
	}
}

func msg(text string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == text }
}

// stop sends sig and returns the exit code.
func (p *process) stop(t *testing.T, sig os.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(15 * time.Second):
		t.Fatalf("still running 15s after %v", sig)
		return -1
	}
}

// `warren up` connects, serves, logs every transition, and stops cleanly on
// SIGTERM with exit code 0.
func TestUpBinary(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	conf := writeFile(t, "wg0.conf", wgQuick(srv.ClientConfig()))
	p := startWarren(t, "up", "-c", conf, "--socks5", "127.0.0.1:0")
	listening := p.waitLog(t, 10*time.Second, msg("SOCKS5 proxy listening"))
	addr, _ := listening["addr"].(string)
	connected := p.waitLog(t, 15*time.Second, msg("tunnel connected"))
	if connected["from"] != "connecting" || connected["to"] != "connected" {
		t.Errorf("transition line %v", connected)
	}
	c := socksClient(t, addr)
	if page := string(get(t, c, "http://demo.warren/")); !strings.Contains(page, demo.ClientIPv4.String()) {
		t.Fatalf("page %q", page)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	// The tunnel was taken down on the way out.
	var states []string
	for len(p.lines) > 0 {
		m := <-p.lines
		if to, ok := m["to"].(string); ok {
			states = append(states, to)
		}
	}
	if got := strings.Join(states, ","); got != "disconnecting,disconnected" {
		t.Errorf("transitions after SIGTERM: %q, want disconnecting,disconnected", got)
	}
}

// `warren demo` prints the command to try, and the command works.
func TestDemoBinary(t *testing.T) {
	p := startWarren(t, "demo", "--socks5", "127.0.0.1:0")
	re := regexp.MustCompile(`curl --socks5-hostname (\S+) (http://\S+)`)
	var m []string
	deadline := time.After(30 * time.Second)
	for m == nil {
		select {
		case line := <-p.stdout:
			m = re.FindStringSubmatch(line)
		case <-deadline:
			t.Fatal("the demo printed no curl command")
		}
	}
	c := socksClient(t, m[1])
	if page := string(get(t, c, m[2])); !strings.Contains(page, "Hello from demo.warren") {
		t.Fatalf("page %q", page)
	}
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d after SIGINT", code)
	}
}

func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string { return env[k] }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code = run(ctx, args, getenv, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheck(t *testing.T) {
	srv := startDemo(t, demo.Options{})
	good := wgQuick(srv.ClientConfig())
	tests := []struct {
		name     string
		text     string
		wantCode int
		want     string // a line of the output
	}{
		{"valid", good, 0, "valid: 2 address(es), 1 DNS server(s), 1 peer(s)"},
		{"bad key", strings.Replace(good, "PrivateKey = ", "PrivateKey = x", 1), 1, ":2: PrivateKey: not a valid key"},
		{"missing section", good[strings.Index(good, "[Peer]"):], 1, ": no [Interface] section"},
		{"duplicate interface", good + "\n[Interface]\n", 1, ": [Interface]: a second [Interface] section (the first is on line 1)"},
		{"unknown key", strings.Replace(good, "[Peer]", "[Peer]\nColour = blue", 1), 1, ": Colour: unknown key in [Peer]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "wg0.conf", tt.text)
			code, stdout, stderr := runCLI(t, nil, "check", "-c", path)
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, tt.wantCode, stderr)
			}
			if !strings.Contains(stdout+stderr, path) || !strings.Contains(stdout+stderr, tt.want) {
				t.Fatalf("output does not name %s and say %q:\n%s%s", path, tt.want, stdout, stderr)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope.conf")
		code, _, stderr := runCLI(t, nil, "check", "-c", missing)
		if code != 1 || !strings.Contains(stderr, missing+": cannot read: no such file") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("from the environment", func(t *testing.T) {
		path := writeFile(t, "wg0.conf", good)
		if code, stdout, stderr := runCLI(t, map[string]string{"WARREN_CONFIG": path}, "check"); code != 0 {
			t.Fatalf("exit %d: %s%s", code, stdout, stderr)
		}
	})
}

func TestUpErrors(t *testing.T) {
	setDefaultConfig(t, filepath.Join(t.TempDir(), "missing.conf"))
	srv := startDemo(t, demo.Options{})
	good := writeFile(t, "wg0.conf", wgQuick(srv.ClientConfig()))
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantCode int
		want     string
	}{
		{"no config", nil, []string{"up"}, 1, "no config: give -c FILE or set WARREN_CONFIG"},
		{"bad config", nil, []string{"up", "-c", writeFile(t, "bad.conf", "[Interface]\n")}, 1, "bad.conf: no [Peer] section"},
		{"bad flag", nil, []string{"up", "--sock5", "x"}, 2, "flag provided but not defined: -sock5"},
		{"extra argument", nil, []string{"up", "-c", good, "extra"}, 2, `unexpected argument "extra"`},
		{"bad env", map[string]string{"WARREN_NO_CONNECT": "maybe"}, []string{"up", "-c", good}, 1, "WARREN_NO_CONNECT: parse error"},
		{"bad log level", nil, []string{"up", "-c", good, "--log-level", "loud"}, 1, `--log-level: "loud" is not debug`},
		{"listen fails", nil, []string{"up", "-c", good, "--socks5", "127.0.0.1:99999"}, 1, "SOCKS5 proxy: listen tcp: address 99999: invalid port"},
		{"unknown command", nil, []string{"fly"}, 2, `unknown command "fly"`},
		{"host flag in proxy mode", nil, []string{"up", "-c", good, "--bootstrap-dns", "192.0.2.53"}, 1, "--bootstrap-dns is for --mode host"},
		{"bad bootstrap DNS", map[string]string{"WARREN_BOOTSTRAP_DNS": "192.0.2.53,dns.example"}, []string{"up", "-c", good, "--mode", "host"}, 1, `WARREN_BOOTSTRAP_DNS: "dns.example" is not IP or IP:PORT`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tt.env, tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d (want %d), stderr:\n%s\nwant it to say %q", code, tt.wantCode, stderr, tt.want)
			}
		})
	}
}

func TestServerList(t *testing.T) {
	var l serverList
	if err := l.Set("192.0.2.53, [2001:db8::53]:5353,2001:db8::1"); err != nil {
		t.Fatal(err)
	}
	if got, want := l.String(), "192.0.2.53:53,[2001:db8::53]:5353,[2001:db8::1]:53"; got != want {
		t.Errorf("parsed %q, want %q", got, want)
	}
	for _, bad := range []string{"", "192.0.2.53:0", "dns.example", "192.0.2.53:x"} {
		if err := new(serverList).Set(bad); err == nil {
			t.Errorf("Set(%q) took it", bad)
		}
	}
}

// A flag's environment variable sets it; the flag on the command line wins.
func TestEnvAndFlags(t *testing.T) {
	newFS := func() (*flag.FlagSet, *proxyFlags, *configFlags) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var pf proxyFlags
		var paths configFlags
		paths.register(fs)
		pf.register(fs)
		return fs, &pf, &paths
	}
	env := map[string]string{
		"WARREN_SOCKS5": "127.0.0.1:9050",
		"WARREN_CONFIG": "/a.conf,/b.conf",
		"WARREN_PROBE":  "10.0.0.1,fd00::1",
		"WARREN_HOLD":   "5s",
		"WARREN_C":      "/ignored",
	}
	getenv := func(k string) string { return env[k] }

	fs, pf, paths := newFS()
	if err := parseFlags(fs, nil, getenv, aliasC); err != nil {
		t.Fatal(err)
	}
	if pf.socks5 != "127.0.0.1:9050" || paths.String() != "/a.conf,/b.conf" || pf.probes.String() != "10.0.0.1,fd00::1" || pf.hold != 5*time.Second {
		t.Fatalf("from env: socks5 %q configs %q probes %q hold %v", pf.socks5, paths, pf.probes.String(), pf.hold)
	}
	// The command line wins, also for flags that may be repeated: its values
	// replace the variable's rather than add to them.
	fs, pf, paths = newFS()
	if err := parseFlags(fs, []string{"--socks5", "127.0.0.1:1081", "-c", "/flag.conf", "--config", "/second.conf", "--probe", "10.9.9.9"}, getenv, aliasC); err != nil {
		t.Fatal(err)
	}
	if pf.socks5 != "127.0.0.1:1081" || paths.String() != "/flag.conf,/second.conf" || pf.probes.String() != "10.9.9.9" {
		t.Fatalf("flags did not win: socks5 %q configs %q probes %q", pf.socks5, paths, pf.probes.String())
	}
	if pf.hold != 5*time.Second {
		t.Fatalf("hold %v: the variable was lost for a flag not on the command line", pf.hold)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "version")
	if code != 0 || !strings.HasPrefix(stdout, "warren ") || !strings.Contains(stdout, runtime.Version()) {
		t.Fatalf("exit %d, %q", code, stdout)
	}
}
