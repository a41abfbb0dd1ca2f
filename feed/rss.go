package feed

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
)

// processRSS returns the process's resident set size now and at its peak
// (VmRSS and VmHWM of /proc/self/status), or zeros where there is no /proc.
func processRSS() (rss, peak int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		for _, field := range []struct {
			name string
			dst  *int64
		}{{"VmRSS:", &rss}, {"VmHWM:", &peak}} {
			if rest, ok := bytes.CutPrefix(line, []byte(field.name)); ok {
				kb, _ := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte("kB")))), 10, 64)
				*field.dst = kb << 10
			}
		}
	}
	return rss, peak
}
