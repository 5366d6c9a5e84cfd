package proxy

import "syscall"

// waitFD waits until c's socket has something to read (data, EOF or an
// error), which it peeks at without taking it.
func waitFD(c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err != syscall.EINTR {
				return err != syscall.EAGAIN // an error is the next Read's
			}
		}
	})
}
