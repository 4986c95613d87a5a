//! XFRM netlink layer (placeholder; see issue 2).
