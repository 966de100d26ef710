package projector

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnvName(t *testing.T) {
	for _, tt := range []struct {
		key, strip, prefix string
		want               string // "" means rejected
	}{
		{"flags.beta", "flags.", "FLAG_", "FLAG_BETA"},
		{"db.max-conns", "", "", "DB_MAX_CONNS"},
		{"a/b.c-d", "", "X_", "X_A_B_C_D"},
		{"Mixed.Case", "", "", "MIXED_CASE"},
		{"9lives", "", "", ""},
		{"9lives", "", "P", "P9LIVES"},
		{"a=b", "", "", ""},
		{"flags.beta", "other.", "", ""},
		{"flags.", "flags.", "F_", ""},
		{"é", "", "", ""},
		{"x", "", "1", ""},
		{"x", "", "BAD-", ""},
		{"_x", "", "", "_X"},
	} {
		got, err := envName(tt.key, tt.strip, tt.prefix)
		if tt.want == "" {
			if err == nil {
				t.Errorf("envName(%q, %q, %q)=%q, want error", tt.key, tt.strip, tt.prefix, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("envName(%q, %q, %q): %v", tt.key, tt.strip, tt.prefix, err)
			continue
		}
		if got != tt.want {
			t.Errorf("envName(%q, %q, %q)=%q, want %q", tt.key, tt.strip, tt.prefix, got, tt.want)
		}
	}
}

func TestEnvVars(t *testing.T) {
	kv := map[string][]byte{
		"flags.a-b":  []byte("wins"),   // '-' (0x2d) sorts before '.' (0x2e) and '/' (0x2f)
		"flags.a.b":  []byte("loses"),  // same name F_A_B
		"flags.a/b":  []byte("loses"),  // same name F_A_B
		"flags.nul":  []byte("a\x00b"), // NUL: reported, no var
		"flags.9":    []byte("x"),      // valid with the prefix
		"flags.x=y":  []byte("x"),      // '=' makes an invalid name
		"flags.ok":   []byte("v"),
		"other.skip": []byte("v"), // no strip prefix
	}
	vars, problems := EnvVars(kv, "flags.", "F_")
	want := map[string]string{"F_A_B": "wins", "F_9": "x", "F_OK": "v"}
	if len(vars) != len(want) {
		t.Fatalf("EnvVars vars=%v, want %v", vars, want)
	}
	for k, v := range want {
		if got := vars[k]; got != v {
			t.Fatalf("EnvVars[%q]=%q, want %q (all: %v)", k, got, v, vars)
		}
	}
	var keys []string
	for _, p := range problems {
		keys = append(keys, p.Key)
		if p.Reason == "" {
			t.Fatalf("problem %+v has no reason", p)
		}
	}
	if got, want := strings.Join(keys, " "), "flags.a.b flags.a/b flags.nul flags.x=y other.skip"; got != want {
		t.Fatalf("problem keys=%q, want %q (%+v)", got, want, problems)
	}
	if got, want := problems[0].Reason, `name collides with key "flags.a-b", which wins`; got != want {
		t.Fatalf("collision reason=%q, want %q", got, want)
	}
	// Deterministic: the same input gives the same answer every time (map order varies).
	for range 20 {
		again, _ := EnvVars(kv, "flags.", "F_")
		if got, want := again["F_A_B"], "wins"; got != want {
			t.Fatalf("EnvVars F_A_B=%q on a later run, want %q", got, want)
		}
	}
}

func TestEncodeDotenv(t *testing.T) {
	got := string(EncodeDotenv(map[string]string{"B": "it's", "A": "x y", "bad-name": "v", "NUL": "a\x00"}))
	if want := "A='x y'\nB='it'\\''s'\n"; got != want {
		t.Fatalf("EncodeDotenv=%q, want %q", got, want)
	}
}

func TestDotenvShell(t *testing.T) {
	vals := []string{"", "plain", "with space", "it's", "''", `"dq"`, "$HOME", "`id`", "$(id)", `back\slash\`,
		"line1\nline2\n", "\n", "tab\there", "ünïcödé ✓", "\xff\xfe invalid utf8", "trailing\\", "=", "a;b&c|d"}
	vars := make(map[string]string)
	for i, v := range vals {
		vars["V"+string(rune('A'+i))] = v
	}
	for name, v := range vars {
		if got := shellValue(t, EncodeDotenv(vars), name); got != v {
			t.Fatalf("sh read %s=%q, want %q", name, got, v)
		}
	}
}

// shellValue sources the dotenv bytes with sh and prints one variable.
func shellValue(t *testing.T, file []byte, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(p, file, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `. "$1" && printf %s "$`+name+`"`, "sh", p)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sh: %v: %s (file %q)", err, stderr.Bytes(), file)
	}
	return string(out)
}

func FuzzDotenv(f *testing.F) {
	for _, s := range []string{"", "plain", "it's", "'\\''", "$HOME `x` $(y)", "a\nb", "\xff", "ü", `\`, "\r\n"} {
		f.Add(s)
	}
	if _, err := exec.LookPath("sh"); err != nil {
		f.Skip("no sh")
	}
	f.Fuzz(func(t *testing.T, v string) {
		if strings.IndexByte(v, 0) >= 0 {
			t.Skip("an environment cannot hold NUL")
		}
		vars := map[string]string{"V": v, "W": "after"}
		file := EncodeDotenv(vars)
		if got := shellValue(t, file, "V"); got != v {
			t.Fatalf("sh read V=%q, want %q (file %q)", got, v, file)
		}
		if got := shellValue(t, file, "W"); got != "after" {
			t.Fatalf("sh read W=%q, want %q (file %q)", got, "after", file)
		}
	})
}

func FuzzEnvName(f *testing.F) {
	for _, s := range []string{"flags.beta", "a/b-c.d", "9", "a=b", "é", "", "flags."} {
		f.Add(s, "flags.", "F_")
		f.Add(s, "", "")
	}
	f.Fuzz(func(t *testing.T, key, strip, prefix string) {
		name, err := envName(key, strip, prefix)
		if err != nil {
			return
		}
		if !strings.HasPrefix(name, prefix) || !ValidEnvName(name) {
			t.Fatalf("envName(%q, %q, %q)=%q is not a valid name with the prefix", key, strip, prefix, name)
		}
		if got, want := len(name), len(prefix)+len(key)-len(strip); got != want {
			t.Fatalf("envName(%q, %q, %q)=%q has %d bytes, want %d", key, strip, prefix, name, got, want)
		}
		if rest := name[len(prefix):]; strings.ToUpper(rest) != rest {
			t.Fatalf("envName(%q)=%q is not upper-cased after the prefix", key, name)
		}
		vars, problems := EnvVars(map[string][]byte{key: []byte("v")}, strip, prefix)
		if len(problems) != 0 || vars[name] != "v" {
			t.Fatalf("EnvVars disagrees with envName(%q)=%q: %v %v", key, name, vars, problems)
		}
	})
}

func BenchmarkEncodeDotenv(b *testing.B) {
	vars := make(map[string]string)
	for i := range 100 {
		vars["FLAG_"+strings.Repeat("X", i%7)+string(rune('A'+i%26))+string(rune('A'+i/26))] = "value with 'quotes' and $dollars " + strings.Repeat("x", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		EncodeDotenv(vars)
	}
}
