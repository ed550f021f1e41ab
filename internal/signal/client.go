package signal

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/coder/websocket"
)

// Client is a Go page at a node's /peer: it says hello, asks for
// candidates, sends offers and waits for their answers, and takes the
// offers other pages send it. Use Signal as control/rtc's Config.Signal.
// It is safe for use by many goroutines.
type Client struct {
	ws      *websocket.Conn
	welcome Welcome
	ctx     context.Context
	cancel  context.CancelFunc

	mu      sync.Mutex
	next    int64
	waiting map[int64]chan result
	cands   []chan []Candidate
	err     error

	offers chan Offer
	done   chan struct{}
}

type result struct {
	sdp string
	err error
}

// ErrRemote wraps an error message the node sent.
var ErrRemote = errors.New("signal: the node says")

// Dial opens the WebSocket at url (ws://host/peer), says hello with key
// and uploadKbps and waits for the welcome.
func Dial(ctx context.Context, url string, key ed25519.PublicKey, uploadKbps int) (*Client, error) {
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(MaxMessage)
	c := &Client{ws: ws, waiting: map[int64]chan result{}, offers: make(chan Offer, MaxOffers), done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := c.Send(ctx, Hello{Type: "hello", Key: hex.EncodeToString(key), UploadKbps: uploadKbps}); err != nil {
		ws.CloseNow()
		return nil, err
	}
	_, b, err := ws.Read(ctx)
	if err == nil {
		err = json.Unmarshal(b, &c.welcome)
		if err == nil && c.welcome.Type != "welcome" {
			err = fmt.Errorf("signal: %s instead of welcome", b)
		}
	}
	if err != nil {
		ws.CloseNow()
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

// Welcome is what the node said to the hello.
func (c *Client) Welcome() Welcome { return c.welcome }

// Send sends any message.
func (c *Client) Send(ctx context.Context, m any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return c.ws.Write(ctx, websocket.MessageText, b)
}

func (c *Client) readLoop() {
	defer close(c.done)
	var err error
	for {
		var b []byte
		_, b, err = c.ws.Read(c.ctx)
		if err != nil {
			break
		}
		var m struct {
			Type  string      `json:"type"`
			From  string      `json:"from"`
			Link  int64       `json:"link"`
			SDP   string      `json:"sdp"`
			Error string      `json:"error"`
			Peers []Candidate `json:"peers"`
		}
		if err = json.Unmarshal(b, &m); err != nil {
			break
		}
		switch m.Type {
		case "answer", "error":
			c.mu.Lock()
			ch := c.waiting[m.Link]
			delete(c.waiting, m.Link)
			c.mu.Unlock()
			if ch != nil {
				r := result{sdp: m.SDP}
				if m.Type == "error" {
					r.err = fmt.Errorf("%w: %s", ErrRemote, m.Error)
				}
				ch <- r
			}
		case "candidates":
			c.mu.Lock()
			if len(c.cands) > 0 {
				c.cands[0] <- m.Peers
				c.cands = c.cands[1:]
			}
			c.mu.Unlock()
		case "offer":
			select {
			case c.offers <- Offer{Type: "offer", From: m.From, Link: m.Link, SDP: m.SDP}:
			default: // nobody takes them
			}
		}
	}
	c.mu.Lock()
	c.err = err
	for _, ch := range c.waiting {
		ch <- result{err: err}
	}
	c.waiting = nil
	c.mu.Unlock()
}

// Candidates asks the node for candidates.
func (c *Client) Candidates(ctx context.Context) ([]Candidate, error) {
	ch := make(chan []Candidate, 1)
	c.mu.Lock()
	c.cands = append(c.cands, ch)
	c.mu.Unlock()
	if err := c.Send(ctx, map[string]string{"type": "candidates"}); err != nil {
		return nil, err
	}
	select {
	case ps := <-ch:
		return ps, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, c.Err()
	}
}

// Signal sends offer to to (NodeID or a page's id) and waits for the
// answer.
func (c *Client) Signal(ctx context.Context, to, offer string) (string, error) {
	ch := make(chan result, 1)
	c.mu.Lock()
	if c.waiting == nil {
		c.mu.Unlock()
		return "", c.Err()
	}
	c.next++
	link := c.next
	c.waiting[link] = ch
	c.mu.Unlock()
	if err := c.Send(ctx, Offer{Type: "offer", To: to, Link: link, SDP: offer}); err != nil {
		return "", err
	}
	select {
	case r := <-ch:
		return r.sdp, r.err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiting, link)
		c.mu.Unlock()
		return "", ctx.Err()
	}
}

// Offers are the offers other pages send this one.
func (c *Client) Offers() <-chan Offer { return c.offers }

// Answer answers an offer from Offers.
func (c *Client) Answer(ctx context.Context, o Offer, sdp string) error {
	return c.Send(ctx, Offer{Type: "answer", To: o.From, Link: o.Link, SDP: sdp})
}

// SendStats reports the page's figures.
func (c *Client) SendStats(ctx context.Context, s Stats) error {
	return c.Send(ctx, StatsMessage{Type: "stats", Stats: s})
}

// Done is closed when the socket closed; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the socket closed (a websocket.CloseError when the node
// closed it), nil while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the socket.
func (c *Client) Close() error {
	err := c.ws.Close(websocket.StatusNormalClosure, "")
	c.cancel()
	<-c.done
	return err
}
