package p2pradio

import "errors"

var (
	// ErrClosed is returned by calls on a closed Node.
	ErrClosed = errors.New("p2pradio: node closed")
	// ErrBadAddress is wrapped by errors parsing a station address.
	ErrBadAddress = errors.New("p2pradio: bad station address")
	// ErrBadConfig is wrapped by errors about an invalid Config.
	ErrBadConfig = errors.New("p2pradio: bad config")
	// ErrNotBroadcaster is returned by calls that only a broadcaster's
	// Node takes, such as SetTitle.
	ErrNotBroadcaster = errors.New("p2pradio: not the broadcaster")
	// ErrNoParent means no parent could be found to join the station.
	ErrNoParent = errors.New("p2pradio: no parent found")
)
