package deploy

// The container image cannot be built here (no Docker daemon, no registry),
// so these tests check what can be checked of it without Docker: the
// Dockerfile says what it must, and the build step it runs, run here the
// same way, makes a file system that has every path and user the Dockerfile
// names, around a static binary.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// dockerInstr is one instruction of a Dockerfile.
type dockerInstr struct {
	line int
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// dockerStage is one FROM and the instructions after it.
type dockerStage struct {
	from, name string
	instrs     []dockerInstr
	args       map[string]string // ARG defaults, the global ones included
}

// parseDockerfile reads path into stages, joining continued lines and
// dropping comments, and expands ${ARG} in FROM from the ARG defaults.
func parseDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var instrs []dockerInstr
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if rest, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		instrs = append(instrs, dockerInstr{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: the last instruction is continued past the end of the file", path)
	}

	global := map[string]string{}
	var stages []dockerStage
	for _, in := range instrs {
		switch {
		case in.cmd == "FROM":
			from, name, _ := strings.Cut(in.args, " AS ")
			args := map[string]string{}
			for k, v := range global {
				args[k] = v
			}
			from = os.Expand(strings.TrimSpace(from), func(k string) string { return args[k] })
			stages = append(stages, dockerStage{from: from, name: strings.TrimSpace(name), args: args})
		case in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			if len(stages) == 0 {
				global[k] = v
			} else if _, ok := stages[len(stages)-1].args[k]; !ok || v != "" {
				stages[len(stages)-1].args[k] = v
			}
		case len(stages) == 0:
			t.Fatalf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
		default:
			s := &stages[len(stages)-1]
			s.instrs = append(s.instrs, in)
		}
	}
	return stages
}

// only returns the stage's one instruction cmd, failing unless there is
// exactly one.
func (s dockerStage) only(t *testing.T, cmd string) dockerInstr {
	t.Helper()
	var found []dockerInstr
	for _, in := range s.instrs {
		if in.cmd == cmd {
			found = append(found, in)
		}
	}
	if len(found) != 1 {
		t.Fatalf("stage %q: %d %s instructions, want 1", s.name, len(found), cmd)
	}
	return found[0]
}

// execForm parses an exec-form (JSON array) argument list.
func execForm(t *testing.T, in dockerInstr, s string) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s: not the exec form (a JSON array): %v", in.line, in.cmd, s, err)
	}
	return argv
}

// goDirective returns go.mod's "go" version as major.minor.
func goDirective(t *testing.T, root string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// repoRoot is the repository's root: this package is deploy/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// checkStatic fails unless path is an ELF executable for machine with no
// program interpreter and no shared library: one that runs in an empty
// image.
func checkStatic(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s: built for %v, want %v", path, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: has a program interpreter: it is dynamically linked", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s: needs shared libraries %v (%v): not static", path, libs, err)
	}
}

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// runBuildScript runs scripts/build.sh with args and the environment
// given, as the Dockerfile's RUN or a release would.
func runBuildScript(t *testing.T, root string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{filepath.Join(root, "scripts", "build.sh")}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	stages := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a final one", len(stages))
	}
	var build *dockerStage
	for i := range stages {
		if stages[i].name == "build" {
			build = &stages[i]
		}
	}
	final := stages[len(stages)-1]
	if build == nil {
		t.Fatal("no stage named build")
	}

	// The build stage: Go of go.mod's version, and the build script.
	if want := "golang:" + goDirective(t, root) + "-"; !strings.HasPrefix(build.from, want) {
		t.Errorf("build stage FROM %s, want %s… (go.mod's go version)", build.from, want)
	}
	var m []string
	for _, in := range build.instrs {
		if in.cmd != "RUN" || !strings.Contains(in.args, "scripts/build.sh") {
			continue
		}
		// It builds for the platform Docker builds the image for.
		m = regexp.MustCompile(`^(?:\S+=\S+ )*GOOS=\$TARGETOS GOARCH=\$TARGETARCH scripts/build\.sh rootfs (\S+)$`).FindStringSubmatch(in.args)
		if m == nil {
			t.Fatalf("Dockerfile:%d: RUN %s: want GOOS=$TARGETOS GOARCH=$TARGETARCH scripts/build.sh rootfs DIR", in.line, in.args)
		}
	}
	if m == nil {
		t.Fatal("the build stage does not run scripts/build.sh rootfs DIR")
	}
	rootfsInBuild := m[1]

	// The final stage: nothing but what the build stage made.
	if final.from != "scratch" {
		t.Errorf("final stage FROM %s, want scratch (a minimal image)", final.from)
	}
	var copies []string
	for _, in := range final.instrs {
		switch in.cmd {
		case "COPY":
			f := strings.Fields(in.args)
			if len(f) != 3 || f[0] != "--from=build" {
				t.Errorf("Dockerfile:%d: COPY %s: want COPY --from=build SRC DEST", in.line, in.args)
				continue
			}
			copies = append(copies, f[1], f[2])
		case "RUN", "ADD":
			t.Errorf("Dockerfile:%d: %s in the final stage, which has no shell", in.line, in.cmd)
		}
	}
	user := final.only(t, "USER").args
	uid, gid, _ := strings.Cut(user, ":")
	if uid == "0" || uid == "root" || uid == "" {
		t.Errorf("USER %q: the image must not run as root", user)
	}
	if got := execForm(t, final.only(t, "ENTRYPOINT"), final.only(t, "ENTRYPOINT").args); !slices.Equal(got, []string{"warren"}) {
		t.Errorf("ENTRYPOINT %q, want [warren]", got)
	}
	if got := execForm(t, final.only(t, "CMD"), final.only(t, "CMD").args); !slices.Equal(got, []string{"up"}) {
		t.Errorf("CMD %q, want [up]", got)
	}
	hc := final.only(t, "HEALTHCHECK")
	_, hcCmd, ok := strings.Cut(hc.args, "CMD ")
	if !ok {
		t.Fatalf("Dockerfile:%d: HEALTHCHECK without CMD", hc.line)
	}
	healthArgv := execForm(t, hc, hcCmd)
	if !slices.Equal(healthArgv, []string{"warren", "healthcheck"}) {
		t.Errorf("HEALTHCHECK CMD %q, want [warren healthcheck]", healthArgv)
	}
	// warren healthcheck gives up after 5 s (ctlTimeout in cmd/warren) and
	// says why; Docker's own timeout must leave it that long, or Docker
	// kills it first and the reason is lost.
	if d := healthcheckTimeout(t, hc); d <= 5*time.Second {
		t.Errorf("Dockerfile:%d: HEALTHCHECK --timeout=%v, want more than warren healthcheck's own 5s", hc.line, d)
	}
	path, ok := strings.CutPrefix(final.only(t, "ENV").args, "PATH=")
	if !ok {
		t.Fatalf("the final stage's ENV is %q, want PATH=… (scratch has no PATH)", final.only(t, "ENV").args)
	}

	// Run the build step as the Dockerfile does, for this machine.
	out := t.TempDir()
	runBuildScript(t, root, []string{"VERSION=v0.0.0-imagetest", "COMMIT=0123abc", "GOOS=linux", "GOARCH=" + runtime.GOARCH}, "rootfs", out)
	inBuild := func(p string) string { // a path of the build stage, here
		rel, err := filepath.Rel(rootfsInBuild, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("COPY --from=build %s: not under the rootfs the build stage makes (%s)", p, rootfsInBuild)
		}
		return filepath.Join(out, rel)
	}
	image := t.TempDir() // the final image's file system, made by its COPYs
	for i := 0; i < len(copies); i += 2 {
		src, dst := inBuild(copies[i]), filepath.Join(image, copies[i+1])
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("COPY --from=build %s: %v", copies[i], err)
		}
		if err := os.CopyFS(dst, os.DirFS(src)); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		if err := copyModes(src, dst); err != nil {
			t.Fatal(err)
		}
	}

	// ENTRYPOINT's and HEALTHCHECK's warren is on the image's PATH, static.
	var bin string
	for _, dir := range filepath.SplitList(path) {
		if fi, err := os.Stat(filepath.Join(image, dir, "warren")); err == nil && fi.Mode()&0o111 != 0 {
			bin = filepath.Join(image, dir, "warren")
			break
		}
	}
	if bin == "" {
		t.Fatalf("no executable warren on the image's PATH %s", path)
	}
	checkStatic(t, bin, elfMachine[runtime.GOARCH])
	v, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(v), "warren v0.0.0-imagetest") || !strings.Contains(string(v), "commit 0123abc") {
		t.Errorf("warren version: %v\n%s\nwant the VERSION and COMMIT the build was given", err, v)
	}

	// The user it runs as exists, and the directories warren uses: its
	// config's, and the API socket's (/tmp/warren-UID for the image's user,
	// /run/warren for root in host mode).
	passwd, err := os.ReadFile(filepath.Join(image, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^[a-z_][a-z0-9_-]*:x:` + regexp.QuoteMeta(uid) + `:` + regexp.QuoteMeta(gid) + `:`).Match(passwd) {
		t.Errorf("/etc/passwd has no user %s:%s (the image's USER):\n%s", uid, gid, passwd)
	}
	group, err := os.ReadFile(filepath.Join(image, "etc/group"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^[a-z_][a-z0-9_-]*:x:` + regexp.QuoteMeta(gid) + `:`).Match(group) {
		t.Errorf("/etc/group has no group %s:\n%s", gid, group)
	}
	for dir, mode := range map[string]fs.FileMode{"etc/warren": 0o755, "run": 0o755, "tmp": 0o777 | fs.ModeSticky} {
		fi, err := os.Stat(filepath.Join(image, dir))
		switch {
		case err != nil:
			t.Errorf("/%s: %v", dir, err)
		case !fi.IsDir() || fi.Mode()&(fs.ModePerm|fs.ModeSticky) != mode:
			t.Errorf("/%s: mode %v, want a directory with %v", dir, fi.Mode(), mode)
		}
	}

	// And nothing else: no shell, no package manager.
	var files []string
	filepath.WalkDir(image, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(image, p)
			files = append(files, rel)
		}
		return err
	})
	slices.Sort(files)
	if want := []string{"etc/group", "etc/passwd", "usr/local/bin/warren"}; !slices.Equal(files, want) {
		t.Errorf("the image holds %q, want only %q", files, want)
	}
}

// copyModes gives every file under dst the mode of its namesake under src
// (os.CopyFS keeps only the permission bits of files, and none of
// directories), as Docker's COPY keeps them.
func copyModes(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		return os.Chmod(filepath.Join(dst, rel), fi.Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid))
	})
}

// TestReleaseBuild builds the release binaries and checks that each is
// static, for its architecture, and listed in SHA256SUMS with its digest.
func TestReleaseBuild(t *testing.T) {
	root := repoRoot(t)
	out := t.TempDir()
	runBuildScript(t, root, []string{"VERSION=v0.0.0-releasetest", "COMMIT=0123abc"}, "release", out)
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not DIGEST  NAME", line)
		}
		listed[name] = sum
	}
	for _, arch := range []string{"amd64", "arm64"} {
		name := "warren-v0.0.0-releasetest-linux-" + arch
		path := filepath.Join(out, name)
		checkStatic(t, path, elfMachine[arch])
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if got := listed[name]; got != hex.EncodeToString(sum[:]) {
			t.Errorf("SHA256SUMS lists %s as %q, want %x", name, got, sum)
		}
		if !bytes.Contains(data, []byte("v0.0.0-releasetest")) {
			t.Errorf("%s does not hold its version", name)
		}
	}
	if len(listed) != 2 {
		t.Errorf("SHA256SUMS lists %d files, want 2:\n%s", len(listed), sums)
	}
}

// healthcheckTimeout is a HEALTHCHECK's --timeout (Docker's default, 30s,
// if it has none).
func healthcheckTimeout(t *testing.T, hc dockerInstr) time.Duration {
	t.Helper()
	for _, f := range strings.Fields(hc.args) {
		if f == "CMD" {
			break
		}
		if v, ok := strings.CutPrefix(f, "--timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("Dockerfile:%d: HEALTHCHECK --timeout=%q: %v", hc.line, v, err)
			}
			return d
		}
	}
	return 30 * time.Second
}
