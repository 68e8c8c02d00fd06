"""Kernel constants of the ``mptcp_pm`` generic-netlink family.

Names keep their kernel spelling (``include/uapi/linux/mptcp_pm.h``), so one
grep finds them in the kernel, in the C mptcpd and here.
"""

from __future__ import annotations

import enum

MPTCP_PM_NAME = "mptcp_pm"
MPTCP_PM_VER = 1  #: version in the kernel's family; requests may carry 0 or 1
MPTCP_PM_CMD_GRP_NAME = "mptcp_pm_cmds"
MPTCP_PM_EV_GRP_NAME = "mptcp_pm_events"

# -- commands (enum mptcp_pm_command) ---------------------------------------
MPTCP_PM_CMD_UNSPEC = 0
MPTCP_PM_CMD_ADD_ADDR = 1
MPTCP_PM_CMD_DEL_ADDR = 2
MPTCP_PM_CMD_GET_ADDR = 3
MPTCP_PM_CMD_FLUSH_ADDRS = 4
MPTCP_PM_CMD_SET_LIMITS = 5
MPTCP_PM_CMD_GET_LIMITS = 6
MPTCP_PM_CMD_SET_FLAGS = 7
MPTCP_PM_CMD_ANNOUNCE = 8
MPTCP_PM_CMD_REMOVE = 9
MPTCP_PM_CMD_SUBFLOW_CREATE = 10
MPTCP_PM_CMD_SUBFLOW_DESTROY = 11

# -- command attributes (MPTCP_PM_ATTR_*) -----------------------------------
MPTCP_PM_ATTR_UNSPEC = 0
MPTCP_PM_ATTR_ADDR = 1  #: nested address (local)
MPTCP_PM_ATTR_RCV_ADD_ADDRS = 2  #: u32
MPTCP_PM_ATTR_SUBFLOWS = 3  #: u32
MPTCP_PM_ATTR_TOKEN = 4  #: u32
MPTCP_PM_ATTR_LOC_ID = 5  #: u8
MPTCP_PM_ATTR_ADDR_REMOTE = 6  #: nested address (remote)

# -- nested address attributes (MPTCP_PM_ADDR_ATTR_*) -----------------------
MPTCP_PM_ADDR_ATTR_UNSPEC = 0
MPTCP_PM_ADDR_ATTR_FAMILY = 1  #: u16
MPTCP_PM_ADDR_ATTR_ID = 2  #: u8
MPTCP_PM_ADDR_ATTR_ADDR4 = 3  #: 4 bytes, network byte order
MPTCP_PM_ADDR_ATTR_ADDR6 = 4  #: 16 bytes
MPTCP_PM_ADDR_ATTR_PORT = 5  #: u16, HOST byte order (the kernel htons() it)
MPTCP_PM_ADDR_ATTR_FLAGS = 6  #: u32
MPTCP_PM_ADDR_ATTR_IF_IDX = 7  #: s32

# -- endpoint flags (MPTCP_PM_ADDR_FLAG_*) ----------------------------------
MPTCP_PM_ADDR_FLAG_SIGNAL = 1 << 0
MPTCP_PM_ADDR_FLAG_SUBFLOW = 1 << 1
MPTCP_PM_ADDR_FLAG_BACKUP = 1 << 2
MPTCP_PM_ADDR_FLAG_FULLMESH = 1 << 3
MPTCP_PM_ADDR_FLAG_IMPLICIT = 1 << 4
MPTCP_PM_ADDR_FLAG_LAMINAR = 1 << 5

# -- events (enum mptcp_event_type) -----------------------------------------
MPTCP_EVENT_UNSPEC = 0
MPTCP_EVENT_CREATED = 1
MPTCP_EVENT_ESTABLISHED = 2
MPTCP_EVENT_CLOSED = 3
MPTCP_EVENT_ANNOUNCED = 6
MPTCP_EVENT_REMOVED = 7
MPTCP_EVENT_SUB_ESTABLISHED = 10
MPTCP_EVENT_SUB_CLOSED = 11
MPTCP_EVENT_SUB_PRIORITY = 13
MPTCP_EVENT_LISTENER_CREATED = 15
MPTCP_EVENT_LISTENER_CLOSED = 16

# -- event attributes (MPTCP_ATTR_*) ----------------------------------------
MPTCP_ATTR_UNSPEC = 0
MPTCP_ATTR_TOKEN = 1  #: u32
MPTCP_ATTR_FAMILY = 2  #: u16
MPTCP_ATTR_LOC_ID = 3  #: u8
MPTCP_ATTR_REM_ID = 4  #: u8
MPTCP_ATTR_SADDR4 = 5  #: 4 bytes, network byte order
MPTCP_ATTR_SADDR6 = 6  #: 16 bytes
MPTCP_ATTR_DADDR4 = 7  #: 4 bytes, network byte order
MPTCP_ATTR_DADDR6 = 8  #: 16 bytes
MPTCP_ATTR_SPORT = 9  #: u16, network byte order
MPTCP_ATTR_DPORT = 10  #: u16, network byte order
MPTCP_ATTR_BACKUP = 11  #: u8
MPTCP_ATTR_ERROR = 12  #: u8
MPTCP_ATTR_FLAGS = 13  #: u16
MPTCP_ATTR_TIMEOUT = 14  #: u32
MPTCP_ATTR_IF_IDX = 15  #: u32
MPTCP_ATTR_RESET_REASON = 16  #: u32
MPTCP_ATTR_RESET_FLAGS = 17  #: u32
MPTCP_ATTR_SERVER_SIDE = 18  #: u8, deprecated since 6.18 (see MPTCP_PM_EV_FLAG_SERVER_SIDE)

# -- event flags (MPTCP_ATTR_FLAGS) -----------------------------------------
MPTCP_PM_EV_FLAG_DENY_JOIN_ID0 = 1 << 0
MPTCP_PM_EV_FLAG_SERVER_SIDE = 1 << 1

NLA_F_NESTED = 0x8000

# -- nlctrl, the generic netlink controller (linux/genetlink.h) --------------
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY, CTRL_CMD_DELFAMILY, CTRL_CMD_GETFAMILY = 1, 2, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME, CTRL_ATTR_MCAST_GRP_ID = 1, 2


class MptcpEvent(enum.IntEnum):
    """The kernel's ``mptcp_pm`` event numbers."""

    CREATED = MPTCP_EVENT_CREATED
    ESTABLISHED = MPTCP_EVENT_ESTABLISHED
    CLOSED = MPTCP_EVENT_CLOSED
    ANNOUNCED = MPTCP_EVENT_ANNOUNCED
    REMOVED = MPTCP_EVENT_REMOVED
    SUB_ESTABLISHED = MPTCP_EVENT_SUB_ESTABLISHED
    SUB_CLOSED = MPTCP_EVENT_SUB_CLOSED
    SUB_PRIORITY = MPTCP_EVENT_SUB_PRIORITY
    LISTENER_CREATED = MPTCP_EVENT_LISTENER_CREATED
    LISTENER_CLOSED = MPTCP_EVENT_LISTENER_CLOSED
