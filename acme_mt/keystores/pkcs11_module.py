"""One PKCS#11 module per process, made safe for threads, and the calls python-pkcs11 lacks.

python-pkcs11 initialises a module with ``C_Initialize(NULL)``, which promises
the module that no two threads call it at once; SoftHSM then turns its own
locking off, yet python-pkcs11 releases the GIL inside every call. So the
module is initialised again here, through ctypes on the same loaded library,
with ``CK_C_INITIALIZE_ARGS.flags = CKF_OS_LOCKING_OK`` (PKCS#11 v2.40,
``C_Initialize``): the module then locks itself and calls on different tokens
run side by side. A module that answers ``CKR_CANT_LOCK`` is initialised
without arguments and every call goes through one process-wide lock instead.

A process sees only the tokens that existed when it initialised the module, so
a token made by another process (``acme-mt tenant create`` beside a running
server) appears only after ``reinitialize``, which ends every session and login
of the process. ``Gate`` lets ordinary calls run together and gives a
re-initialisation the module to itself; ``generation`` tells sessions opened
before it that they are gone (their handle numbers may already name new
sessions, so they must never be closed).

python-pkcs11 0.10.1 has no ``C_InitToken`` and always logs a session out when
closing it, which would log out every other session on the token in this
process; ``C_InitToken``, ``C_Login``, ``C_Logout`` and ``C_CloseSession`` are
therefore called through ctypes here. PINs go to the module as call arguments,
never through a command line.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pkcs11
from pkcs11 import TokenFlag
from pkcs11.exceptions import PKCS11Error

from acme_mt.errors import KeyStoreError

logger = logging.getLogger(__name__)

CKF_OS_LOCKING_OK = 0x2
CKU_SO = 0
CKU_USER = 1
CKR_OK = 0x0
CKR_CANT_LOCK = 0xA
CKR_USER_ALREADY_LOGGED_IN = 0x100
#: Return values named in errors; the rest are shown in hex.
CKR_NAMES = {
    0x3: "CKR_SLOT_ID_INVALID",
    0x5: "CKR_GENERAL_ERROR",
    0x6: "CKR_FUNCTION_FAILED",
    0xA0: "CKR_PIN_INCORRECT",
    0xA1: "CKR_PIN_INVALID",
    0xA2: "CKR_PIN_LEN_RANGE",
    0xA3: "CKR_PIN_EXPIRED",
    0xA4: "CKR_PIN_LOCKED",
    0xB3: "CKR_SESSION_HANDLE_INVALID",
    0xB6: "CKR_SESSION_EXISTS",
    0xE0: "CKR_TOKEN_NOT_PRESENT",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
}
LABEL_SIZE = 32
#: Tries, and the pause between them, to list the tokens while another process writes one.
LIST_ATTEMPTS = 5
LIST_PAUSE_SECONDS = 0.05

_ulong = ctypes.c_ulong
_RvFunction = ctypes.CFUNCTYPE(_ulong, ctypes.c_void_p)
_InitToken = ctypes.CFUNCTYPE(_ulong, _ulong, ctypes.c_char_p, _ulong, ctypes.c_char_p)
_Login = ctypes.CFUNCTYPE(_ulong, _ulong, _ulong, ctypes.c_char_p, _ulong)
_SessionFunction = ctypes.CFUNCTYPE(_ulong, _ulong)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    """The head of CK_FUNCTION_LIST, up to C_Logout, in the order the standard fixes."""

    # Limitation: these structures use the platform's natural alignment, as
    # PKCS#11 modules on Unix do; Windows modules pack to one byte, which a
    # ``_pack_ = 1`` variant would cover.

    _fields_ = [("version", _Version)] + [
        (name, ctypes.c_void_p)
        for name in [
            "C_Initialize",
            "C_Finalize",
            "C_GetInfo",
            "C_GetFunctionList",
            "C_GetSlotList",
            "C_GetSlotInfo",
            "C_GetTokenInfo",
            "C_GetMechanismList",
            "C_GetMechanismInfo",
            "C_InitToken",
            "C_InitPIN",
            "C_SetPIN",
            "C_OpenSession",
            "C_CloseSession",
            "C_CloseAllSessions",
            "C_GetSessionInfo",
            "C_GetOperationState",
            "C_SetOperationState",
            "C_Login",
            "C_Logout",
        ]
    ]


class _InitializeArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", _ulong),
        ("pReserved", ctypes.c_void_p),
    ]


def session_handle(session: pkcs11.Session) -> int:
    """The CK_SESSION_HANDLE python-pkcs11's session wraps (its stubs omit it)."""
    return int(session.handle)  # type: ignore[attr-defined]


def rv_name(rv: int) -> str:
    """A PKCS#11 return value as its CKR_ name, or in hex."""
    return CKR_NAMES.get(rv, f"CKR 0x{rv:x}")


class Gate:
    """Shared entry for ordinary calls, exclusive entry for re-initialisation.

    A waiting re-initialisation holds back new calls, so a steady stream of
    signatures cannot starve it. Entries must not nest in one thread.

    Limitation: a re-initialisation also waits for key generations in progress
    (an RSA-4096 key takes seconds on SoftHSM), and holds new calls meanwhile;
    cancelling generations, or generating in a process of their own, would end
    that.
    """

    def __init__(self, serial: bool) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._calls = 0
        self._exclusive = False
        self._waiting = 0
        # Limitation: without module locking, calls on different tokens wait
        # for each other; a module that accepts CKF_OS_LOCKING_OK ends that.
        self._serial = threading.Lock() if serial else None

    def enter(self) -> None:
        """Begin an ordinary call; waits while a re-initialisation runs or waits."""
        with self._lock:  # the bare lock: cheaper than the condition on the hot path
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._calls += 1
        if self._serial is not None:
            self._serial.acquire()

    def leave(self) -> None:
        """End an ordinary call begun with ``enter``."""
        if self._serial is not None:
            self._serial.release()
        with self._lock:
            self._calls -= 1
            if not self._calls and self._waiting:
                self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        """``enter`` and ``leave`` around a block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the module alone: no ordinary call runs inside this block."""
        with self._lock:
            self._waiting += 1
            while self._exclusive or self._calls:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._lock:
                self._exclusive = False
                self._cond.notify_all()


class Pkcs11Module:
    """A loaded PKCS#11 library: python-pkcs11's handle plus the ctypes calls it lacks.

    One per library path per process (``load``), because initialisation and
    login state belong to the process, not to a key store object.
    """

    _loaded: dict[str, Pkcs11Module] = {}
    _loading = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.lib = pkcs11.lib(path)
            self._dll = ctypes.CDLL(path)
        except (PKCS11Error, OSError) as exc:
            raise KeyStoreError(f"cannot load the PKCS#11 module {path}: {exc}") from None
        pointer = ctypes.POINTER(_FunctionList)()
        rv = self._dll.C_GetFunctionList(ctypes.byref(pointer))
        if rv != CKR_OK or not pointer:
            raise KeyStoreError(f"C_GetFunctionList of {path} failed: {rv_name(rv)}")
        table = pointer.contents
        self._finalize = _RvFunction(table.C_Finalize)
        self._initialize = _RvFunction(table.C_Initialize)
        self._init_token = _InitToken(table.C_InitToken)
        self._login = _Login(table.C_Login)
        self._logout = _SessionFunction(table.C_Logout)
        self._close_session = _SessionFunction(table.C_CloseSession)
        self.os_locking = self._start()
        self.gate = Gate(serial=not self.os_locking)
        self.generation = 0
        #: Held while a free slot is chosen and initialised, or a token wiped.
        self.token_lock = threading.Lock()

    @classmethod
    def load(cls, path: str) -> Pkcs11Module:
        """The process's module for ``path``, loading it on first use."""
        with cls._loading:
            module = cls._loaded.get(path)
            if module is None:
                module = cls._loaded[path] = cls(path)
            return module

    def _start(self) -> bool:
        """Finalize whatever initialisation came before and initialise with OS locking.

        :returns: whether the module locks itself.
        """
        self._finalize(None)
        rv = self._initialize(ctypes.byref(_InitializeArgs(flags=CKF_OS_LOCKING_OK)))
        if rv == CKR_OK:
            return True
        if rv == CKR_CANT_LOCK:
            logger.warning("PKCS#11 module %s cannot lock; calls are serialised", self.path)
            rv = self._initialize(None)
            if rv == CKR_OK:
                return False
        raise KeyStoreError(f"C_Initialize of {self.path} failed: {rv_name(rv)}")

    def reinitialize(self) -> None:
        """Finalize and initialise again, so tokens other processes made become visible.

        Every session and login of the process ends; partitions reopen theirs
        on their next call, seeing ``generation`` move.
        """
        with self.gate.exclusive():
            self._start()
            self.generation += 1
        logger.info("re-initialised PKCS#11 module %s", self.path)

    def find_token(self, label: str) -> pkcs11.Token | None:
        """The initialised token labelled ``label``; call inside ``gate``.

        :raises KeyStoreError: two tokens carry the label, or the module failed.
        """
        found = [
            token
            for _slot, token in self._tokens()
            if token.label == label and token.flags & TokenFlag.TOKEN_INITIALIZED
        ]
        if len(found) > 1:
            raise KeyStoreError(f"{len(found)} tokens are labelled {label!r}; refusing to guess")
        return found[0] if found else None

    def free_slot(self) -> int | None:
        """The id of a slot whose token is not initialised yet; call inside ``gate``."""
        for slot, token in self._tokens():
            if not token.flags & TokenFlag.TOKEN_INITIALIZED:
                return int(slot.slot_id)
        return None

    def _tokens(self) -> list[tuple[pkcs11.Slot, pkcs11.Token]]:
        """Every slot with a token present, and its token.

        Another process writing a token's files (a worker of the same server
        making a key, say) can make a token's info fail for a moment with
        GeneralError in SoftHSM, so a failed listing is tried again.

        :raises KeyStoreError: the listing kept failing.
        """
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                return [(slot, slot.get_token()) for slot in self.lib.get_slots(token_present=True)]
            except PKCS11Error as exc:
                if attempt == LIST_ATTEMPTS:
                    raise KeyStoreError(f"cannot list tokens: {type(exc).__name__}") from None
                logger.warning("listing tokens failed (%s); trying again", type(exc).__name__)
                time.sleep(LIST_PAUSE_SECONDS)
        raise AssertionError("unreachable")

    def init_token(self, slot_id: int, so_pin: str, label: str) -> None:
        """C_InitToken: initialise (or wipe) the token in ``slot_id`` under ``label``."""
        encoded = label.encode()
        if len(encoded) > LABEL_SIZE:
            raise KeyStoreError(f"token label {label!r} is longer than {LABEL_SIZE} bytes")
        pin = so_pin.encode()
        rv = self._init_token(slot_id, pin, len(pin), encoded.ljust(LABEL_SIZE))
        if rv != CKR_OK:
            raise KeyStoreError(f"cannot initialise token {label!r}: {rv_name(rv)}")

    def login(self, session: pkcs11.Session, pin: str, *, security_officer: bool = False) -> int:
        """C_Login on ``session``; returns CKR_OK or the refusal (already logged in is OK)."""
        data = pin.encode()
        user = CKU_SO if security_officer else CKU_USER
        rv = int(self._login(session_handle(session), user, data, len(data)))
        return CKR_OK if rv == CKR_USER_ALREADY_LOGGED_IN else rv

    def logout(self, session: pkcs11.Session) -> None:
        """C_Logout: ends the login of every session on the session's token."""
        self._logout(session_handle(session))

    def close_session(self, session: pkcs11.Session) -> None:
        """C_CloseSession without logging out the token's other sessions in this process."""
        self._close_session(session_handle(session))
