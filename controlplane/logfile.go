package main

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A log larger than this at start is moved to PATH.1 (replacing the previous one): the
// components log at start and on changes, so two files of this size hold many starts.
const logRotateBytes = 32 << 20

// redirectOutput points the process's stdout and stderr at PATH (made with its directory,
// appended to): all three components and etcd log to stderr, and on a device that is a file on
// persist rather than the serial console. Only the ready line (and a fatal error) also goes to
// the original stderr, so the console still shows the milestones.
func redirectOutput(path string) (console *os.File, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("--log-file %s: %w", path, err)
	}
	if st, err := os.Stat(path); err == nil && st.Size() > logRotateBytes {
		if err := os.Rename(path, path+".1"); err != nil {
			return nil, fmt.Errorf("--log-file %s: rotating: %w", path, err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("--log-file %s: %w", path, err)
	}
	defer f.Close()
	dup, err := unix.Dup(2)
	if err != nil {
		return nil, fmt.Errorf("--log-file: keeping stderr: %w", err)
	}
	unix.CloseOnExec(dup)
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			unix.Close(dup)
			return nil, fmt.Errorf("--log-file %s: %w", path, err)
		}
	}
	return os.NewFile(uintptr(dup), "console"), nil
}
