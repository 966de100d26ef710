package process

import (
	"strings"
	"testing"
)

func TestInheritEnv(t *testing.T) {
	environ := []string{"PATH=/bin", "HOME=/root", "AWS_SECRET=s", "AWS_REGION=eu", "APP_X=1"}
	for _, tc := range []struct {
		name string
		env  ExecEnvConfig
		want string
	}{
		{"all", ExecEnvConfig{}, "PATH=/bin HOME=/root AWS_SECRET=s AWS_REGION=eu APP_X=1"},
		{"pristine", ExecEnvConfig{Pristine: true, Allow: []string{"*"}, Set: map[string]string{"B": "2", "A": "1"}}, "A=1 B=2"},
		{"deny", ExecEnvConfig{Deny: []string{"AWS_*"}}, "PATH=/bin HOME=/root APP_X=1"},
		{"allow", ExecEnvConfig{Allow: []string{"PATH", "AWS_*"}, Deny: []string{"*SECRET*"}}, "PATH=/bin AWS_REGION=eu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(inheritEnv(environ, tc.env), " "); got != tc.want {
				t.Errorf("inheritEnv = %q, want %q", got, tc.want)
			}
		})
	}
}
