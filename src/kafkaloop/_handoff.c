/* kafkaloop._handoff: the thread-to-loop handoff's hot path in C. Optional: _pyhandoff.py is
 * the pure-Python twin, used when this extension is not built (or KAFKALOOP_NO_EXTENSIONS=1).
 * Only _bridge.py (PendingCalls) and _producer.py (Settle, AwaitedProduce, BatchSettle) use
 * it.
 *
 * PendingCalls(loop, on_error): the bridge's queue of calls for the loop.
 *   call_soon(callback, *args), from any thread: queue the call; the first one after a drain
 *     also schedules a drain with loop.call_soon_threadsafe (one loop wake-up per batch).
 *   drain(), on the loop: run every call queued so far, in order; calls queued meanwhile wait
 *     for the drain they scheduled. A call that raises is reported to on_error(exc) and the
 *     others still run; KeyboardInterrupt and SystemExit stop the drain, and the calls not
 *     yet run wait for the next one (scheduled at once).
 *   serve(func, *args), on the loop: func(*args) (a client's poll(0)). Calls made on the
 *     loop's thread meanwhile run at once instead of queuing; calls from other threads wait,
 *     without a wake-up, for a drain right after. A KeyboardInterrupt or SystemExit from a
 *     call is not passed into librdkafka's callback: the calls after it queue, and serve()
 *     raises it when func returns.
 *   All run with the GIL held and never release it between taking and putting back the
 *   queue, so any number of threads may call call_soon at once.
 * Settle(metadata_type, on_failure, on_room): settles an awaited produce when its delivery
 *   report is drained: settle(future, err, msg). Delivered: counts it and sets the future's
 *   result to metadata_type(topic, partition, offset, timestamp or None) (a partition or
 *   offset librdkafka does not know, as with acks=0, is -1) unless the future is done
 *   (cancelled); failed: on_failure(future, err, msg). Either way, on_room() when the
 *   room_wanted flag is set. Called once per awaited message, with no Python frame.
 * AwaitedProduce(...): AIOProducer.produce() for its common case (a topic, a value, maybe a
 *   key and a partition of exact type int), installed on each producer in place of the Python method, which it
 *   calls for every other case. It hands confluent-kafka a Delivery, the one-allocation
 *   functools.partial(call_soon, settle, future). The Python method is its twin: there is no
 *   other in _pyhandoff.py.
 * BatchSettle(size, call_soon, make_error, on_done, settle): produce_many's loop over its
 *   items, and the outcome of each report, settled on the loop; on_done(results) after the
 *   last.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_message.h"

static PyObject *str_call_soon_threadsafe, *str_done, *str_set_result, *str_drain;
static PyObject *minus_one; /* -1 */

/* The raised exception, taken (normalized, with its traceback); a new reference. */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* -- PendingCalls ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *on_error;
    PyObject *queue;    /* a list of tuples (callback, *args) */
    int scheduled;
    unsigned long serving;  /* the thread inside serve(), or 0 */
    PyObject *interrupted;  /* a KeyboardInterrupt/SystemExit held back inside serve() */
} PendingCalls;

static PyObject *
pending_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *loop, *on_error;
    static char *kwlist[] = {"loop", "on_error", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:PendingCalls", kwlist, &loop, &on_error)) {
        return NULL;
    }
    PendingCalls *self = (PendingCalls *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->loop = Py_NewRef(loop);
    self->on_error = Py_NewRef(on_error);
    self->queue = PyList_New(0);
    if (self->queue == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
pending_traverse(PendingCalls *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->on_error);
    Py_VISIT(self->queue);
    Py_VISIT(self->interrupted);
    return 0;
}

static int
pending_clear(PendingCalls *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->interrupted);
    return 0;
}

static void
pending_dealloc(PendingCalls *self)
{
    PyObject_GC_UnTrack(self);
    pending_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* loop.call_soon_threadsafe(self.drain), once per batch. The bound method is made each time:
 * one kept in self would make self a reference cycle that only the garbage collector frees. */
static PyObject *
pending_schedule_drain(PendingCalls *self)
{
    PyObject *drain = PyObject_GetAttr((PyObject *)self, str_drain);
    if (drain == NULL) {
        return NULL;
    }
    PyObject *handle = PyObject_CallMethodOneArg(self->loop, str_call_soon_threadsafe, drain);
    Py_DECREF(drain);
    return handle;
}

static int
pending_usable(PendingCalls *self)
{
    if (self->queue == NULL || self->loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PendingCalls was cleared");
        return 0;
    }
    return 1;
}

/* 1 if the loop is closed, 0 if not, -1 if asking failed (the error it raised is dropped:
 * the caller reports its own). */
static int
loop_is_closed(PyObject *loop)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *closed = PyObject_CallMethod(loop, "is_closed", NULL);
    int result = closed == NULL ? -1 : PyObject_IsTrue(closed);
    Py_XDECREF(closed);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return result;
}

/* Report an exception a call raised to on_error (the caller goes on with the next call). */
static void
report_failure(PendingCalls *self)
{
    PyObject *exc = take_exception();
    PyObject *logged = PyObject_CallOneArg(self->on_error, exc != NULL ? exc : Py_None);
    Py_XDECREF(exc);
    if (logged == NULL) {
        PyErr_WriteUnraisable(self->on_error);
    }
    else {
        Py_DECREF(logged);
    }
}

static int
stops_the_loop(void)
{
    return PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) ||
           PyErr_ExceptionMatches(PyExc_SystemExit);
}

static PyObject *
pending_call_soon(PendingCalls *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_soon(callback, *args)");
        return NULL;
    }
    if (!pending_usable(self)) {
        return NULL;
    }
    if (self->serving != 0 && self->serving == PyThread_get_thread_ident()) {
        /* Inside serve(), on the loop: now is soon, and the message is still in the cache. */
        PyObject *result = PyObject_Vectorcall(args[0], args + 1, nargs - 1, NULL);
        if (result != NULL) {
            Py_DECREF(result);
            Py_RETURN_NONE;
        }
        if (stops_the_loop()) {
            /* Not into librdkafka's callback: serve() raises it once poll() returns. Calls
             * from here on queue, as outside serve(). */
            if (self->interrupted == NULL) {
                self->interrupted = take_exception();
            }
            else {
                PyErr_Clear();
            }
            self->serving = 0;
            Py_RETURN_NONE;
        }
        report_failure(self);
        Py_RETURN_NONE;
    }
    PyObject *call = PyTuple_New(nargs);
    if (call == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(call, i, Py_NewRef(args[i]));
    }
    int appended = PyList_Append(self->queue, call);
    Py_DECREF(call);
    if (appended < 0) {
        return NULL;
    }
    if (self->scheduled) {
        Py_RETURN_NONE;
    }
    self->scheduled = 1;
    PyObject *handle = pending_schedule_drain(self);
    if (handle != NULL) {
        Py_DECREF(handle);
        Py_RETURN_NONE;
    }
    self->scheduled = 0;
    if (PyErr_ExceptionMatches(PyExc_RuntimeError) && loop_is_closed(self->loop) == 1) {
        /* Nothing will ever run on a closed loop: drop what waits for it. */
        PyErr_Clear();
        if (PyList_SetSlice(self->queue, 0, PyList_GET_SIZE(self->queue), NULL) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyObject *
pending_drain(PendingCalls *self, PyObject *unused)
{
    if (!pending_usable(self)) {
        return NULL;
    }
    /* Clear the flag first: a call queued while draining schedules the next drain. */
    self->scheduled = 0;
    PyObject *batch = self->queue;
    self->queue = PyList_New(0);
    if (self->queue == NULL) {
        self->queue = batch;
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *call = PyList_GET_ITEM(batch, i);
        PyObject *result = PyObject_Vectorcall(PyTuple_GET_ITEM(call, 0),
                                               &PyTuple_GET_ITEM(call, 1),
                                               PyTuple_GET_SIZE(call) - 1, NULL);
        if (result != NULL) {
            Py_DECREF(result);
            continue;
        }
        if (stops_the_loop()) {
            /* Stop, as asyncio does for these, and keep the calls not yet run. */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyObject *rest = PyList_GetSlice(batch, i + 1, n);
            if (rest != NULL) {
                if (PyList_SetSlice(self->queue, 0, 0, rest) < 0) {
                    PyErr_Clear();
                }
                Py_DECREF(rest);
            }
            else {
                PyErr_Clear();
            }
            Py_DECREF(batch);
            /* Whatever is left must not wait for a call_soon that may never come. */
            if (PyList_GET_SIZE(self->queue) > 0 && !self->scheduled) {
                self->scheduled = 1;
                PyObject *handle = pending_schedule_drain(self);
                if (handle == NULL) {
                    self->scheduled = 0;
                    PyErr_Clear();
                }
                Py_XDECREF(handle);
            }
            PyErr_Restore(type, value, tb);
            return NULL;
        }
        /* Any other exception (a CancelledError too) is reported, and the rest run. */
        report_failure(self);
    }
    Py_DECREF(batch);
    Py_RETURN_NONE;
}

/* serve(func, *args), on the loop: func(*args), a client's poll(0). What was queued before runs
 * first; the calls func's callbacks make on this thread then run at once, as they come (the
 * message a delivery report carries is still in the CPU's cache, and nothing piles up); calls
 * from other threads meanwhile wait, without a wake-up, for the drain right after. An exception
 * from func is raised after that drain; one from a drain wins over it. */
static PyObject *
pending_serve(PendingCalls *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "serve(func, *args)");
        return NULL;
    }
    if (!pending_usable(self)) {
        return NULL;
    }
    if (self->serving != 0) {
        PyErr_SetString(PyExc_RuntimeError, "serve() is already running");
        return NULL;
    }
    PyObject *backlog = pending_drain(self, NULL);
    if (backlog == NULL) {
        return NULL;
    }
    Py_DECREF(backlog);
    self->scheduled = 1;
    self->serving = PyThread_get_thread_ident();
    PyObject *result = PyObject_Vectorcall(args[0], args + 1, nargs - 1, NULL);
    self->serving = 0;
    PyObject *failure = NULL;
    if (result == NULL) {
        failure = take_exception();
    }
    else {
        Py_DECREF(result);
    }
    if (self->interrupted != NULL) {
        /* Stop, as asyncio does; what queued meanwhile waits for a drain, scheduled now. */
        PyObject *interrupted = self->interrupted;
        self->interrupted = NULL;
        Py_XDECREF(failure);
        self->scheduled = 0;
        if (PyList_GET_SIZE(self->queue) > 0) {
            self->scheduled = 1;
            PyObject *handle = pending_schedule_drain(self);
            if (handle == NULL) {
                self->scheduled = 0;
                PyErr_Clear();
            }
            Py_XDECREF(handle);
        }
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(interrupted)), interrupted,
                      PyException_GetTraceback(interrupted));
        return NULL;
    }
    PyObject *drained = pending_drain(self, NULL);
    if (drained == NULL) {
        if (failure != NULL) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (value != NULL) {
                PyException_SetContext(value, failure); /* steals failure */
            }
            else {
                Py_DECREF(failure);
            }
            PyErr_Restore(type, value, tb);
        }
        return NULL;
    }
    Py_DECREF(drained);
    if (failure != NULL) {
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(failure)), failure,
                      PyException_GetTraceback(failure));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef pending_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))pending_call_soon, METH_FASTCALL,
     "call_soon(callback, *args): run it on the loop soon (from any thread)."},
    {"drain", (PyCFunction)pending_drain, METH_NOARGS,
     "Run every call queued so far (on the loop's thread)."},
    {"serve", (PyCFunction)(void (*)(void))pending_serve, METH_FASTCALL,
     "serve(func, *args): on the loop, func(*args) then a drain, with no wake-up between."},
    {NULL},
};

static Py_ssize_t
pending_length(PendingCalls *self)
{
    return self->queue == NULL ? 0 : PyList_GET_SIZE(self->queue);
}

static PySequenceMethods pending_as_sequence = {
    .sq_length = (lenfunc)pending_length,
};

static PyTypeObject PendingCallsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._handoff.PendingCalls",
    .tp_basicsize = sizeof(PendingCalls),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("Calls queued for the event loop, run in batches."),
    .tp_new = pending_new,
    .tp_dealloc = (destructor)pending_dealloc,
    .tp_traverse = (traverseproc)pending_traverse,
    .tp_clear = (inquiry)pending_clear,
    .tp_methods = pending_methods,
    .tp_as_sequence = &pending_as_sequence,
};

/* -- Settle ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *metadata_type;
    PyObject *on_failure;
    PyObject *on_room;
    Py_ssize_t delivered;
    int room_wanted;
    vectorcallfunc vectorcall;
} Settle;


static PyObject *empty_str;

static PyObject *
settle_metadata(Settle *self, PyObject *msg)
{
    if (self->metadata_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Settle was cleared");
        return NULL;
    }
    PyObject *fields = PyTuple_New(4);
    if (fields == NULL) {
        return NULL;
    }
    static const int methods[3] = {M_TOPIC, M_PARTITION, M_OFFSET};
    for (Py_ssize_t i = 0; i < 3; i++) {
        PyObject *item = message_call(msg, methods[i]);
        if (item == NULL) {
            goto fail;
        }
        if (item == Py_None) { /* not known (acks=0): "" for a topic, -1 for a number */
            Py_DECREF(item);
            item = Py_NewRef(i == 0 ? empty_str : minus_one);
        }
        PyTuple_SET_ITEM(fields, i, item);
    }
    PyObject *timestamp = message_timestamp(msg);
    if (timestamp == NULL) {
        goto fail;
    }
    PyTuple_SET_ITEM(fields, 3, timestamp);
    /* tuple.__new__(metadata_type, fields): a NamedTuple's own __new__ is a Python frame. */
    PyObject *args = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (args == NULL) {
        return NULL;
    }
    PyObject *metadata = PyTuple_Type.tp_new((PyTypeObject *)self->metadata_type, args, NULL);
    Py_DECREF(args);
    return metadata;
fail:
    Py_DECREF(fields);
    return NULL;
}

static PyObject *
settle_call(Settle *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "settle(future, err, msg)");
        return NULL;
    }
    if (self->on_failure == NULL || self->on_room == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Settle was cleared");
        return NULL;
    }
    PyObject *future = args[0], *err = args[1], *msg = args[2];
    if (err != Py_None) {
        PyObject *r = PyObject_Vectorcall(self->on_failure, args, 3, NULL);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    else {
        self->delivered++;
        PyObject *done = PyObject_CallMethodNoArgs(future, str_done);
        if (done == NULL) {
            return NULL;
        }
        int is_done = PyObject_IsTrue(done);
        Py_DECREF(done);
        if (is_done < 0) {
            return NULL;
        }
        if (!is_done) {
            PyObject *metadata = settle_metadata(self, msg);
            if (metadata == NULL) {
                return NULL;
            }
            PyObject *r = PyObject_CallMethodOneArg(future, str_set_result, metadata);
            Py_DECREF(metadata);
            if (r == NULL) {
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    if (self->room_wanted) {
        PyObject *r = PyObject_CallNoArgs(self->on_room);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *
settle_metadata_method(Settle *self, PyObject *msg)
{
    return settle_metadata(self, msg);
}

static PyMethodDef settle_methods[] = {
    {"metadata", (PyCFunction)settle_metadata_method, METH_O,
     "metadata(msg): metadata_type(topic, partition, offset, timestamp or None)."},
    {NULL},
};

static PyObject *
settle_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *metadata_type, *on_failure, *on_room;
    static char *kwlist[] = {"metadata_type", "on_failure", "on_room", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO:Settle", kwlist, &PyType_Type,
                                     &metadata_type, &on_failure, &on_room)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)metadata_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Settle: metadata_type must be a tuple type");
        return NULL;
    }
    Settle *self = (Settle *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->metadata_type = Py_NewRef(metadata_type);
    self->on_failure = Py_NewRef(on_failure);
    self->on_room = Py_NewRef(on_room);
    self->vectorcall = (vectorcallfunc)settle_call;
    return (PyObject *)self;
}

static int
settle_traverse(Settle *self, visitproc visit, void *arg)
{
    Py_VISIT(self->metadata_type);
    Py_VISIT(self->on_failure);
    Py_VISIT(self->on_room);
    return 0;
}

static int
settle_clear(Settle *self)
{
    Py_CLEAR(self->metadata_type);
    Py_CLEAR(self->on_failure);
    Py_CLEAR(self->on_room);
    return 0;
}

static void
settle_dealloc(Settle *self)
{
    PyObject_GC_UnTrack(self);
    settle_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
settle_get_room_wanted(Settle *self, void *closure)
{
    return PyBool_FromLong(self->room_wanted);
}

static int
settle_set_room_wanted(Settle *self, PyObject *value, void *closure)
{
    int truth = value == NULL ? 0 : PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    self->room_wanted = truth;
    return 0;
}

static PyGetSetDef settle_getset[] = {
    {"room_wanted", (getter)settle_get_room_wanted, (setter)settle_set_room_wanted,
     "When true, on_room() is called after each settled delivery.", NULL},
    {NULL},
};

static PyMemberDef settle_members[] = {
    {"delivered", T_PYSSIZET, offsetof(Settle, delivered), 0,
     "Deliveries counted on the loop: those it settled, and what its owner adds."},
    {NULL},
};

static PyTypeObject SettleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._handoff.Settle",
    .tp_basicsize = sizeof(Settle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = PyDoc_STR("Settles awaited produces from their delivery reports."),
    .tp_new = settle_new,
    .tp_dealloc = (destructor)settle_dealloc,
    .tp_traverse = (traverseproc)settle_traverse,
    .tp_clear = (inquiry)settle_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Settle, vectorcall),
    .tp_getset = settle_getset,
    .tp_members = settle_members,
    .tp_methods = settle_methods,
};

/* -- Delivery, AwaitedProduce ------------------------------------------------------------ */

/* delivery(err, msg), librdkafka's callback for one awaited produce, on whichever thread serves
 * it: call_soon(settle, future, err, msg). functools.partial(call_soon, settle, future) in one
 * allocation. */
typedef struct {
    PyObject_HEAD
    PyObject *call_soon;
    PyObject *settle;
    PyObject *future;
    vectorcallfunc vectorcall;
} Delivery;

static PyTypeObject DeliveryType;

static PyObject *
delivery_call(Delivery *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "delivery(err, msg)");
        return NULL;
    }
    if (self->call_soon == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the delivery was cleared");
        return NULL;
    }
    PyObject *call[4] = {self->settle, self->future, args[0], args[1]};
    return PyObject_Vectorcall(self->call_soon, call, 4, NULL);
}

static PyObject *
delivery_make(PyObject *call_soon, PyObject *settle, PyObject *future)
{
    Delivery *self = PyObject_GC_New(Delivery, &DeliveryType);
    if (self == NULL) {
        return NULL;
    }
    self->call_soon = Py_NewRef(call_soon);
    self->settle = Py_NewRef(settle);
    self->future = Py_NewRef(future);
    self->vectorcall = (vectorcallfunc)delivery_call;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
delivery_traverse(Delivery *self, visitproc visit, void *arg)
{
    Py_VISIT(self->call_soon);
    Py_VISIT(self->settle);
    Py_VISIT(self->future);
    return 0;
}

static int
delivery_clear(Delivery *self)
{
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->settle);
    Py_CLEAR(self->future);
    return 0;
}

static void
delivery_dealloc(Delivery *self)
{
    PyObject_GC_UnTrack(self);
    delivery_clear(self);
    PyObject_GC_Del(self);
}

static PyTypeObject DeliveryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._handoff.Delivery",
    .tp_basicsize = sizeof(Delivery),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = PyDoc_STR("An awaited produce's delivery callback: call_soon(settle, future, "
                        "err, msg)."),
    .tp_dealloc = (destructor)delivery_dealloc,
    .tp_traverse = (traverseproc)delivery_traverse,
    .tp_clear = (inquiry)delivery_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Delivery, vectorcall),
};

/* AwaitedProduce(produce, create_future, call_soon, settle, waiting, fallback, on_error):
 * AIOProducer.produce() for its common case, installed on each producer as `produce`. The
 * case: open, no message waiting for room, topic/value/key given, partition an int or None,
 * no headers nor timestamp. It creates the future, hands the message to confluent-kafka's
 * produce(topic, value, key, partition, Delivery) and counts it. Anything else goes to
 * fallback (the Python method, with the same arguments); an exception from produce goes to
 * on_error(exc, topic, value, key, partition, delivery, future), which returns the future
 * or raises. */
typedef struct {
    PyObject_HEAD
    PyObject *produce;
    PyObject *create_future;
    PyObject *call_soon;
    PyObject *settle;
    PyObject *waiting;
    PyObject *fallback;
    PyObject *on_error;
    Py_ssize_t produced;
    char open;
    vectorcallfunc vectorcall;
} AwaitedProduce;

static int
kwname_is(PyObject *name, const char *expected)
{
    return PyUnicode_CompareWithASCIIString(name, expected) == 0;
}

static PyObject *
awaited_call(AwaitedProduce *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *value = Py_None, *key = Py_None, *partition = Py_None;
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "AwaitedProduce was cleared");
        return NULL;
    }
    if (!self->open || nargs < 1 || nargs > 3) {
        goto fallback;
    }
    if (nargs > 1) {
        value = args[1];
    }
    if (nargs > 2) {
        key = args[2];
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i), *arg = args[nargs + i];
            if (nargs < 2 && kwname_is(name, "value")) {
                value = arg;
            }
            else if (nargs < 3 && kwname_is(name, "key")) {
                key = arg;
            }
            else if (kwname_is(name, "partition")) {
                partition = arg;
            }
            else if (arg != Py_None || !(kwname_is(name, "headers") ||
                                         kwname_is(name, "timestamp"))) {
                goto fallback;
            }
        }
    }
    if (partition == Py_None) {
        partition = minus_one;
    }
    else if (!PyLong_CheckExact(partition)) {
        goto fallback;
    }
    Py_ssize_t waiting = PyObject_Length(self->waiting);
    if (waiting != 0) {
        if (waiting < 0) {
            return NULL;
        }
        goto fallback;
    }
    PyObject *future = PyObject_CallNoArgs(self->create_future);
    if (future == NULL) {
        return NULL;
    }
    PyObject *delivery = delivery_make(self->call_soon, self->settle, future);
    if (delivery == NULL) {
        Py_DECREF(future);
        return NULL;
    }
    PyObject *produce_args[5] = {args[0], value, key, partition, delivery};
    PyObject *r = PyObject_Vectorcall(self->produce, produce_args, 5, NULL);
    if (r == NULL) {
        PyObject *exc = take_exception();
        PyObject *failed_args[7] = {exc != NULL ? exc : Py_None, args[0], value, key, partition,
                                    delivery, future};
        PyObject *result = PyObject_Vectorcall(self->on_error, failed_args, 7, NULL);
        Py_XDECREF(exc);
        Py_DECREF(delivery);
        Py_DECREF(future);
        return result;
    }
    Py_DECREF(r);
    Py_DECREF(delivery);
    self->produced++;
    return future;
fallback:
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
awaited_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *produce, *create_future, *call_soon, *settle, *waiting, *fallback, *on_error;
    static char *kwlist[] = {"produce", "create_future", "call_soon", "settle",
                             "waiting", "fallback",      "on_error",  NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOO:AwaitedProduce", kwlist, &produce,
                                     &create_future, &call_soon, &settle, &waiting, &fallback,
                                     &on_error)) {
        return NULL;
    }
    AwaitedProduce *self = (AwaitedProduce *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->produce = Py_NewRef(produce);
    self->create_future = Py_NewRef(create_future);
    self->call_soon = Py_NewRef(call_soon);
    self->settle = Py_NewRef(settle);
    self->waiting = Py_NewRef(waiting);
    self->fallback = Py_NewRef(fallback);
    self->on_error = Py_NewRef(on_error);
    self->open = 1;
    self->vectorcall = (vectorcallfunc)awaited_call;
    return (PyObject *)self;
}

static int
awaited_traverse(AwaitedProduce *self, visitproc visit, void *arg)
{
    Py_VISIT(self->produce);
    Py_VISIT(self->create_future);
    Py_VISIT(self->call_soon);
    Py_VISIT(self->settle);
    Py_VISIT(self->waiting);
    Py_VISIT(self->fallback);
    Py_VISIT(self->on_error);
    return 0;
}

static int
awaited_clear(AwaitedProduce *self)
{
    Py_CLEAR(self->fallback); /* first: a call while clearing then stops at its check */
    Py_CLEAR(self->produce);
    Py_CLEAR(self->create_future);
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->settle);
    Py_CLEAR(self->waiting);
    Py_CLEAR(self->on_error);
    return 0;
}

static void
awaited_dealloc(AwaitedProduce *self)
{
    PyObject_GC_UnTrack(self);
    awaited_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
awaited_get_doc(AwaitedProduce *self, void *closure)
{
    if (self->fallback == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttrString(self->fallback, "__doc__");
}

static PyObject *
awaited_get_wrapped(AwaitedProduce *self, void *closure)
{
    if (self->fallback == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(self->fallback);
}

static PyGetSetDef awaited_getset[] = {
    {"__doc__", (getter)awaited_get_doc, NULL, NULL, NULL},
    {"__wrapped__", (getter)awaited_get_wrapped, NULL,
     "The Python produce() this stands for (inspect.signature follows it).", NULL},
    {NULL},
};

static PyMemberDef awaited_members[] = {
    {"produced", T_PYSSIZET, offsetof(AwaitedProduce, produced), 0,
     "Messages it handed to librdkafka."},
    {"open", T_BOOL, offsetof(AwaitedProduce, open), 0,
     "False once the producer refuses messages: every call then goes to fallback."},
    {NULL},
};

static PyTypeObject AwaitedProduceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._handoff.AwaitedProduce",
    .tp_basicsize = sizeof(AwaitedProduce),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = awaited_new,
    .tp_dealloc = (destructor)awaited_dealloc,
    .tp_traverse = (traverseproc)awaited_traverse,
    .tp_clear = (inquiry)awaited_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(AwaitedProduce, vectorcall),
    .tp_getset = awaited_getset,
    .tp_members = awaited_members,
};

/* -- BatchSettle ------------------------------------------------------------------------ */

/* BatchSettle(size, call_soon, make_error, on_done, settle): the outcomes of one
 * produce_many. produce(produce, topic, items, start, headers) hands items[start:] to
 * confluent-kafka's produce, each with a Delivery(call_soon, self, index); it stops at the
 * first exception, which it raises with `next` at the item that failed. Each report, drained
 * on the loop, arrives as self(index, err, msg): the result is the metadata settle makes, or
 * make_error(err, msg); a second outcome for the same index is ignored. The last one calls
 * on_done(results). After each, settle's on_room()
 * when its room_wanted is set. */
typedef struct {
    PyObject_HEAD
    PyObject *results;
    PyObject *call_soon;
    PyObject *make_error;
    PyObject *on_done;
    Settle *settle;
    Py_ssize_t remaining;
    Py_ssize_t next;
    vectorcallfunc vectorcall;
} BatchSettle;

static PyTypeObject BatchSettleType;
static PyObject *str_headers_kwnames;

static PyObject *
batch_call(BatchSettle *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "batch(index, err, msg)");
        return NULL;
    }
    if (self->results == NULL || self->settle == NULL || self->settle->on_room == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSettle was cleared");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[0]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0 || index >= PyList_GET_SIZE(self->results)) {
        PyErr_SetString(PyExc_IndexError, "batch: no such message");
        return NULL;
    }
    if (PyList_GET_ITEM(self->results, index) != Py_None) {
        Py_RETURN_NONE; /* settled already: an outcome counts once */
    }
    PyObject *err = args[1], *msg = args[2], *outcome;
    if (err == Py_None) {
        outcome = settle_metadata(self->settle, msg);
    }
    else {
        outcome = PyObject_Vectorcall(self->make_error, args + 1, 2, NULL);
    }
    if (outcome == NULL) {
        return NULL;
    }
    PyList_SetItem(self->results, index, outcome); /* steals outcome */
    if (--self->remaining == 0) {
        PyObject *r = PyObject_CallOneArg(self->on_done, self->results);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    if (self->settle->room_wanted) {
        PyObject *r = PyObject_CallNoArgs(self->settle->on_room);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *
batch_produce(BatchSettle *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "produce(produce, topic, items, start, headers)");
        return NULL;
    }
    PyObject *produce = args[0], *topic = args[1], *items = args[2], *headers = args[4];
    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "produce: items must be a list");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[3]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "produce: start must be >= 0");
        return NULL;
    }
    if (self->call_soon == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "BatchSettle was cleared");
        return NULL;
    }
    for (Py_ssize_t i = start; i < PyList_GET_SIZE(items); i++) {
        self->next = i;
        PyObject *item = Py_NewRef(PyList_GET_ITEM(items, i)), *key = Py_None, *value = item;
        if (PyTuple_Check(item)) {
            if (PyTuple_GET_SIZE(item) != 2) {
                Py_DECREF(item);
                PyErr_Format(PyExc_ValueError,
                             "item %zd: a tuple must be a (key, value) pair", i);
                return NULL;
            }
            key = PyTuple_GET_ITEM(item, 0);
            value = PyTuple_GET_ITEM(item, 1);
        }
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL) {
            Py_DECREF(item);
            return NULL;
        }
        PyObject *delivery = delivery_make(self->call_soon, (PyObject *)self, index);
        Py_DECREF(index);
        if (delivery == NULL) {
            Py_DECREF(item);
            return NULL;
        }
        PyObject *call[6] = {topic, value, key, minus_one, delivery, headers};
        PyObject *r = headers == Py_None
                          ? PyObject_Vectorcall(produce, call, 5, NULL)
                          : PyObject_Vectorcall(produce, call, 5, str_headers_kwnames);
        Py_DECREF(delivery);
        Py_DECREF(item);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    self->next = PyList_GET_SIZE(items);
    Py_RETURN_NONE;
}

static PyObject *
batch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    PyObject *call_soon, *make_error, *on_done, *settle;
    static char *kwlist[] = {"size", "call_soon", "make_error", "on_done", "settle", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOOOO!:BatchSettle", kwlist, &size,
                                     &call_soon, &make_error, &on_done, &SettleType, &settle)) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "BatchSettle: size must be >= 0");
        return NULL;
    }
    BatchSettle *self = (BatchSettle *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->results = PyList_New(size);
    if (self->results == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyList_SET_ITEM(self->results, i, Py_NewRef(Py_None));
    }
    self->call_soon = Py_NewRef(call_soon);
    self->make_error = Py_NewRef(make_error);
    self->on_done = Py_NewRef(on_done);
    self->settle = (Settle *)Py_NewRef(settle);
    self->remaining = size;
    self->vectorcall = (vectorcallfunc)batch_call;
    return (PyObject *)self;
}

static int
batch_traverse(BatchSettle *self, visitproc visit, void *arg)
{
    Py_VISIT(self->results);
    Py_VISIT(self->call_soon);
    Py_VISIT(self->make_error);
    Py_VISIT(self->on_done);
    Py_VISIT(self->settle);
    return 0;
}

static int
batch_clear(BatchSettle *self)
{
    Py_CLEAR(self->results);
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->make_error);
    Py_CLEAR(self->on_done);
    Py_CLEAR(self->settle);
    return 0;
}

static void
batch_dealloc(BatchSettle *self)
{
    PyObject_GC_UnTrack(self);
    batch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef batch_methods[] = {
    {"produce", (PyCFunction)(void (*)(void))batch_produce, METH_FASTCALL,
     "produce(produce, topic, items, start, headers): hand items[start:] to produce."},
    {NULL},
};

static PyMemberDef batch_members[] = {
    {"next", T_PYSSIZET, offsetof(BatchSettle, next), READONLY,
     "The index of the next item produce() hands over (the failed one after an exception)."},
    {"remaining", T_PYSSIZET, offsetof(BatchSettle, remaining), READONLY,
     "Outcomes not yet known."},
    {NULL},
};

static PyTypeObject BatchSettleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._handoff.BatchSettle",
    .tp_basicsize = sizeof(BatchSettle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = PyDoc_STR("The outcomes of one produce_many, settled on the loop."),
    .tp_new = batch_new,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(BatchSettle, vectorcall),
    .tp_methods = batch_methods,
    .tp_members = batch_members,
};

/* -- module ----------------------------------------------------------------------------- */

static struct PyModuleDef handoff_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kafkaloop._handoff",
    .m_doc = "The thread-to-loop handoff's hot path in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__handoff(void)
{
    str_call_soon_threadsafe = PyUnicode_InternFromString("call_soon_threadsafe");
    str_done = PyUnicode_InternFromString("done");
    str_set_result = PyUnicode_InternFromString("set_result");
    str_drain = PyUnicode_InternFromString("drain");
    if (str_call_soon_threadsafe == NULL || str_done == NULL || str_set_result == NULL ||
        str_drain == NULL) {
        return NULL;
    }
    if (message_init() < 0) {
        return NULL;
    }
    minus_one = PyLong_FromLong(-1);
    empty_str = PyUnicode_FromString("");
    str_headers_kwnames = Py_BuildValue("(s)", "headers");
    if (minus_one == NULL || empty_str == NULL || str_headers_kwnames == NULL) {
        return NULL;
    }
    if (PyType_Ready(&PendingCallsType) < 0 || PyType_Ready(&SettleType) < 0 ||
        PyType_Ready(&DeliveryType) < 0 || PyType_Ready(&AwaitedProduceType) < 0 ||
        PyType_Ready(&BatchSettleType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&handoff_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "PendingCalls", (PyObject *)&PendingCallsType) < 0 ||
        PyModule_AddObjectRef(module, "Settle", (PyObject *)&SettleType) < 0 ||
        PyModule_AddObjectRef(module, "AwaitedProduce", (PyObject *)&AwaitedProduceType) < 0 ||
        PyModule_AddObjectRef(module, "BatchSettle", (PyObject *)&BatchSettleType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
