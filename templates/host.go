package templates

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Functions that read the host: `file` (a folder the operator configured),
// privateIP, interfaceIP and sockaddr (the network interfaces). Their results
// are read at each render and are not dependencies: a change of the file or
// of an address alone does not re-render the template.

func (b *binding) file(name string) (string, error) {
	if b.r == nil {
		return "", errNotRendering
	}
	return readFile(b.opts, name)
}

// readFile reads name below o.Files: a relative name is relative to the
// folder, an absolute one must lie inside o.FileRoot. A name that leads out
// of the folder, lexically or through a symbolic link (o.Files is an
// os.Root's FS), is an error, as is anything but a regular file or a file
// larger than the template's output limit.
func readFile(o *Options, name string) (string, error) {
	if o.Files == nil {
		return "", fmt.Errorf("file %q: no file_root configured", name)
	}
	rel, err := underRoot(o.FileRoot, name)
	if err != nil {
		return "", fmt.Errorf("file %q: %w", name, err)
	}
	f, err := o.Files.Open(rel)
	if err != nil {
		return "", fmt.Errorf("file %q: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("file %q: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("file %q: not a regular file (%v)", name, fi.Mode().Type())
	}
	var r io.Reader = f
	if o.MaxOutput > 0 {
		r = io.LimitReader(f, o.MaxOutput+1)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return "", fmt.Errorf("file %q: %w", name, err)
	}
	if o.MaxOutput > 0 && int64(len(b)) > o.MaxOutput {
		return "", fmt.Errorf("file %q: %w: more than %d bytes", name, ErrOutputTooLarge, o.MaxOutput)
	}
	return string(b), nil
}

// errEscapes: a `file` argument names a path outside the folder.
var errEscapes = errors.New("path leads out of file_root")

// underRoot returns name as a path relative to root, in the form fs.FS
// takes, or errEscapes.
func underRoot(root, name string) (string, error) {
	if name == "" {
		return "", errors.New("empty path")
	}
	clean := filepath.Clean(name)
	if filepath.IsAbs(clean) {
		if root == "" {
			return "", errEscapes
		}
		r, err := filepath.Rel(filepath.Clean(root), clean)
		if err != nil {
			return "", errEscapes
		}
		clean = r
	}
	if clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		return "", errEscapes
	}
	rel := filepath.ToSlash(clean)
	if !fs.ValidPath(rel) {
		return "", fmt.Errorf("%q is not a valid path", name)
	}
	return rel, nil
}

// hostAddr is one address of one network interface.
type hostAddr struct {
	iface string
	flags net.Flags
	ip    netip.Addr
}

// hostAddrs lists the addresses of the host's interfaces in the order the
// system gives them (on Linux: by interface index, then as `ip addr` shows).
func hostAddrs() ([]hostAddr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []hostAddr
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			out = append(out, hostAddr{iface: ifc.Name, flags: ifc.Flags, ip: ip.Unmap()})
		}
	}
	return out, nil
}

// privateIP returns the first private IPv4 address (RFC 1918: 10/8,
// 172.16/12, 192.168/16) of an interface that is up and not a loopback.
func privateIP() (string, error) {
	as, err := hostAddrs()
	if err != nil {
		return "", fmt.Errorf("privateIP: %w", err)
	}
	return pickPrivateIP(as)
}

func pickPrivateIP(as []hostAddr) (string, error) {
	for _, a := range as {
		if a.flags&net.FlagUp == 0 || a.flags&net.FlagLoopback != 0 {
			continue
		}
		if a.ip.Is4() && a.ip.IsPrivate() {
			return a.ip.String(), nil
		}
	}
	return "", errors.New("privateIP: no interface that is up and not a loopback has a private IPv4 address (10/8, 172.16/12, 192.168/16)")
}

// interfaceIP returns the first IPv4 address of the interface name, whether
// it is up or not.
func interfaceIP(name string) (string, error) {
	as, err := hostAddrs()
	if err != nil {
		return "", fmt.Errorf("interfaceIP: %w", err)
	}
	return pickInterfaceIP(as, name)
}

func pickInterfaceIP(as []hostAddr, name string) (string, error) {
	known := false
	for _, a := range as {
		if a.iface != name {
			continue
		}
		known = true
		if a.ip.Is4() {
			return a.ip.String(), nil
		}
	}
	if known {
		return "", fmt.Errorf("interfaceIP: interface %s has no IPv4 address", name)
	}
	return "", fmt.Errorf("interfaceIP: no interface %s with an address", name)
}

// sockaddr takes the two go-sockaddr templates consul-template users write
// most, `sockaddr "GetPrivateIP"` and `sockaddr "GetInterfaceIP \"eth0\""`,
// and answers them with privateIP and interfaceIP. Anything else is an error.
func sockaddr(args ...string) (string, error) {
	s := strings.TrimSpace(strings.Join(args, " "))
	if s == "GetPrivateIP" {
		return privateIP()
	}
	if rest, ok := strings.CutPrefix(s, "GetInterfaceIP "); ok {
		name, err := strconv.Unquote(strings.TrimSpace(rest))
		if err == nil {
			return interfaceIP(name)
		}
	}
	return "", fmt.Errorf(`sockaddr: only "GetPrivateIP" and "GetInterfaceIP \"NAME\"" are supported, not %q (use privateIP or interfaceIP)`, s)
}
