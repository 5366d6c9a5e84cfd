package proxy

import (
	"os"
	"syscall"
)

// waitFD waits until c's socket has something to read (data, EOF or an
// error), which it peeks at without taking it. A pending error (a reset,
// say) is the exception: the peek takes it from the socket, so that the
// next Read would see EOF instead, and waitFD returns it.
func waitFD(c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var (
		b       [1]byte
		sockErr error
	)
	err = rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			case nil: // data, or EOF
			default:
				sockErr = os.NewSyscallError("recvfrom", err)
			}
			return true
		}
	})
	if err != nil {
		return err
	}
	return sockErr
}
