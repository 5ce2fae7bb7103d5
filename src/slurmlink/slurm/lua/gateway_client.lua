--[[
gateway_client.lua -- how slurmlink's Slurm Lua scripts reach the local gateway: one HTTP/1.0 POST over a
Unix socket, URL-encoded fields in, (status, body) out. Rendered into burst_buffer.lua and job_submit.lua
at install time (slurmlink.slurm.plugin), after their SOCKET_PATH, SYNC_TIMEOUT and CONNECT_RETRY.

Sync calls (inside slurmctld, often with a lock held) get one connect attempt and a hard deadline
(SYNC_TIMEOUT); async calls retry the connect for CONNECT_RETRY seconds and wait for the answer without
a read timeout. Nothing here keeps state between calls; nothing is passed to a shell.
--]]
-- How many times an async operation is sent when the gateway goes away mid-request.
local ASYNC_ATTEMPTS = 3
-- Marks a request the gateway dropped (closed without answering), which an async caller may resend.
local DROPPED = "dropped"

-- socket.core (the C module) has all we use (gettime, sleep); the "socket" Lua wrapper would be
-- parsed again on every call, since slurmctld gives each call a fresh Lua state.
local ok_socket, socket = pcall(require, "socket.core")
local ok_unix, unix = false, nil
if ok_socket then
	ok_unix, unix = pcall(require, "socket.unix")
end

local NO_LUASOCKET = "slurmlink: LuaSocket is not installed (apt-get install lua-socket)"

-- application/x-www-form-urlencoded: everything outside [A-Za-z0-9_.~-] becomes %XX (spaces too, as %20).
local function urlencode(value)
	return (string.gsub(tostring(value), "[^A-Za-z0-9_%.~%-]", function(c)
		return string.format("%%%02X", string.byte(c))
	end))
end

-- fields: an array of {name, value}; pairs with a nil value are left out (Slurm did not provide them).
local function encode_form(fields)
	local parts = {}
	for _, field in ipairs(fields) do
		if field[2] ~= nil then
			parts[#parts + 1] = urlencode(field[1]) .. "=" .. urlencode(field[2])
		end
	end
	return table.concat(parts, "&")
end

local function new_unix_socket()
	if type(unix) == "function" then
		return unix()                   -- LuaSocket 2.x: the module is the constructor
	elseif type(unix) == "table" and unix.stream then
		return unix.stream()            -- LuaSocket 3.x
	end
	return unix()                       -- LuaSocket 3.x callable module table
end

local function unreachable(err)
	return string.format("slurmlink: cannot reach the slurmlink gateway at %s: %s "
		.. "(is 'slurmlink slurm gateway' running?)", SOCKET_PATH, tostring(err))
end

local function timed_out()
	return string.format("slurmlink: the slurmlink gateway at %s did not answer within %g s",
		SOCKET_PATH, SYNC_TIMEOUT)
end

local function unreadable(reason)
	return string.format("slurmlink: unreadable answer from the slurmlink gateway at %s: %s",
		SOCKET_PATH, reason)
end

-- Splits a raw HTTP/1.x answer into (status code, body), or (nil, reason).
local function parse_response(raw)
	local head_end, body_start = string.find(raw, "\r\n\r\n", 1, true)
	if not head_end then
		head_end, body_start = string.find(raw, "\n\n", 1, true)
	end
	if not head_end then
		return nil, "no end of headers"
	end
	local head = string.sub(raw, 1, head_end - 1)
	local body = string.sub(raw, body_start + 1)
	local code = string.match(head, "^HTTP/%d+%.%d+ (%d%d%d)")
	if not code then
		return nil, string.format("bad status line %q", string.sub(string.match(head, "^[^\r\n]*"), 1, 80))
	end
	local length = string.match("\n" .. string.lower(head), "\ncontent%-length:%s*(%d+)")
	if length then
		length = tonumber(length)
		if #body < length then
			return nil, string.format("truncated body (%d of %d bytes)", #body, length)
		end
		body = string.sub(body, 1, length)
	end
	return tonumber(code), body
end

--[[ Slurm 22.05 runs each async call in a child that slurmscriptd forks without closing what it has
open, so the child also holds the write end of the pipe of every call being forked at that moment.
slurmscriptd sees a call end only when its pipe has no writer left: a call that ended stays
unfinished for Slurm until every call forked alongside it has ended too (after a burst of
submissions, a job's stage-in counts as done only when the slowest setup of its burst is). A call
that has not been answered within RELEASE_AFTER seconds (rendered into burst_buffer.lua) closes
those write ends, then waits on: a pipe whose read end it holds as well is not its own (its own is
the one whose read end slurmscriptd closed in it). Quicker calls skip the scan (a few milliseconds
with hundreds of calls open) and hold their siblings for that long at most. Only in such a child
(named slurmscriptd and leader of its own process group, as Slurm makes it), never in slurmctld
itself; later Slurm releases start the call through a program that closes them already (nothing
is found). ]]
local INHERITED_FD_GAP = 128 -- consecutive unused descriptors after which the scan stops

local function read_all(path)
	local f = io.open(path, "r")
	if not f then
		return nil
	end
	local text = f:read("*a")
	f:close()
	return text
end

local function in_forked_script_child()
	local comm = read_all("/proc/self/comm")
	if comm == nil or not string.match(comm, "^slurmscriptd%s*$") then
		return false
	end
	-- /proc/self/stat: pid (comm) state ppid pgrp ...
	local pid, pgrp = string.match(read_all("/proc/self/stat") or "", "^(%d+) %b() %S+ %d+ (%d+) ")
	return pid ~= nil and pid == pgrp
end

local function close_descriptor(fd)
	local holder = socket.tcp()         -- a LuaSocket object closes whatever descriptor it is given
	if not holder then
		return
	end
	holder:close()
	holder:setfd(fd)
	holder:close()
end

local function release_inherited_pipes()
	if not ok_socket or not in_forked_script_child() then
		return
	end
	local mounted = {}                  -- pipes live on no mount listed here; files and devices do
	for line in string.gmatch(read_all("/proc/self/mountinfo") or "", "[^\n]+") do
		mounted[string.match(line, "^(%d+) ") or ""] = true
	end
	local pipes = {}                    -- "mount:inode" -> { readers = n, writers = { fd... } }
	local fd, gap = 3, 0
	while gap < INHERITED_FD_GAP do
		local info = read_all("/proc/self/fdinfo/" .. fd)
		if info == nil then
			gap = gap + 1
		else
			gap = 0
			local flags = tonumber(string.match(info, "flags:%s*(%d+)") or "", 8)
			local mnt = string.match(info, "mnt_id:%s*(%d+)")
			local ino = string.match(info, "ino:%s*(%d+)")
			if flags and mnt and ino and not mounted[mnt] then
				local key = mnt .. ":" .. ino
				local pipe = pipes[key] or { readers = 0, writers = {} }
				pipes[key] = pipe
				if flags % 4 == 0 then
					pipe.readers = pipe.readers + 1
				elseif flags % 4 == 1 then
					pipe.writers[#pipe.writers + 1] = fd
				end
			end
		end
		fd = fd + 1
	end
	for _, pipe in pairs(pipes) do
		if pipe.readers > 0 then
			for _, writer in ipairs(pipe.writers) do
				close_descriptor(writer)
			end
		end
	end
end

-- Reads the whole answer. An async call of burst_buffer.lua lets go of other calls' pipes once it has
-- waited RELEASE_AFTER seconds (see above); job_submit.lua defines no RELEASE_AFTER.
local function receive_all(sock, sync)
	if sync or RELEASE_AFTER == nil then
		return sock:receive("*a")
	end
	sock:settimeout(RELEASE_AFTER)
	local raw, err, partial = sock:receive("*a")
	if raw or err ~= "timeout" then
		return raw, err, partial
	end
	release_inherited_pipes()
	sock:settimeout(nil)
	local rest, rest_err, rest_partial = sock:receive("*a")
	if rest then
		return (partial or "") .. rest
	end
	return nil, rest_err, (partial or "") .. (rest_partial or "")
end

-- Connects to the gateway. Sync: one attempt bounded by the deadline. Async: retries for CONNECT_RETRY s.
local function connect(sync, deadline)
	local started = socket.gettime()
	while true do
		local sock, err = new_unix_socket()
		if not sock then
			return nil, unreachable(err)
		end
		if sync then
			sock:settimeout(math.max(deadline - socket.gettime(), 0), "t")
		else
			sock:settimeout(nil)
		end
		local ok
		ok, err = sock:connect(SOCKET_PATH)
		if ok then
			return sock
		end
		sock:close()
		if sync then
			if err == "timeout" then
				return nil, timed_out()
			end
			return nil, unreachable(err)
		end
		local left = CONNECT_RETRY - (socket.gettime() - started)
		if left <= 0 then
			return nil, unreachable(err)
		end
		socket.sleep(math.min(0.2, left))
	end
end

-- One POST /v1/<operation>. Returns (status code, body) for any HTTP answer, or (nil, message) when the
-- gateway could not be reached or its answer could not be read.
local function request(operation, fields, sync)
	if not (ok_socket and ok_unix) then
		return nil, NO_LUASOCKET
	end
	local deadline = sync and (socket.gettime() + SYNC_TIMEOUT) or nil
	local sock, err = connect(sync, deadline)
	if not sock then
		return nil, err
	end
	-- Re-arms the total timeout of the next socket operation with what is left of the deadline.
	local function arm()
		if not sync then
			return true
		end
		local left = deadline - socket.gettime()
		if left <= 0 then
			return false
		end
		sock:settimeout(left, "t")
		return true
	end

	local body = encode_form(fields)
	local data = "POST /v1/" .. operation .. " HTTP/1.0\r\n"
		.. "Host: slurmlink\r\n"
		.. "Content-Type: application/x-www-form-urlencoded\r\n"
		.. "Content-Length: " .. #body .. "\r\n"
		.. "\r\n" .. body
	if not arm() then
		sock:close()
		return nil, timed_out()
	end
	local sent
	sent, err = sock:send(data)
	if not sent then
		sock:close()
		if err == "timeout" then
			return nil, timed_out()
		end
		return nil, unreachable("sending the request failed: " .. tostring(err))
	end
	if not arm() then
		sock:close()
		return nil, timed_out()
	end
	local raw, partial
	raw, err, partial = receive_all(sock, sync)
	sock:close()
	if not raw then
		if err == "timeout" then
			return nil, timed_out()
		elseif err == "closed" and partial and partial ~= "" then
			raw = partial
		elseif err == "closed" then
			return nil, string.format("slurmlink: the slurmlink gateway at %s closed the connection "
				.. "without answering", SOCKET_PATH), DROPPED
		else
			return nil, unreachable("reading the answer failed: " .. tostring(err))
		end
	end
	local code, rest = parse_response(raw)
	if not code then
		return nil, unreadable(rest)
	end
	return code, rest
end

-- Runs one operation: returns the 200 body, or (nil, message for Slurm) after logging the failure.
-- An async operation whose gateway went away mid-request (killed and restarted: the connection closed
-- unanswered, or its front answered that its worker dropped the request) is sent again: every async
-- operation is idempotent (move the Workflow to a state and wait), so a restart costs no job.
local function call(operation, fields, sync)
	local code, body, dropped
	local attempts = sync and 1 or ASYNC_ATTEMPTS
	for attempt = 1, attempts do
		code, body, dropped = request(operation, fields, sync)
		local again = dropped or code == 502
		if not again or attempt == attempts then
			break
		end
		slurm.log_info("slurmlink: %s: the gateway went away mid-request (%s); sending it again",
			operation, tostring(body))
	end
	if code == nil then
		slurm.log_error("%s [%s]", body, operation)
		return nil, body
	end
	if code ~= 200 then
		if body == "" then
			body = "slurmlink gateway: HTTP " .. code
		end
		slurm.log_info("slurmlink: %s failed (HTTP %d): %s", operation, code, body)
		return nil, body
	end
	return body
end
