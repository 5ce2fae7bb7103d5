--[[
burst_buffer.lua -- slurmlink's script for Slurm's burst_buffer/lua plugin.

Design: a thin forwarder. Every slurm_bb_* callback sends its arguments, URL-encoded, to the local slurmlink
gateway ('slurmlink slurm gateway') as one HTTP/1.0 POST over a Unix socket and turns the answer into
"rc[, msg]". All real work (directive checks, Workflow creation, state changes, waiting, teardown) happens
in the gateway. See docs/slurm-plugin.md for the protocol.

Why: job_process, paths and pools run synchronously inside slurmctld, with the job write lock held for the
first two. Forking kubectl or Python there would stall the whole controller, whereas a local socket round
trip costs well under a millisecond. Those sync calls get a hard deadline (SYNC_TIMEOUT) and a single
connect attempt so a hung or stopped gateway can never hang slurmctld. The other callbacks run in a forked
slurmscriptd child that Slurm kills after StageIn/StageOut/OtherTimeout, so they wait without a read timeout
(the gateway bounds its own waits) and retry the connect for CONNECT_RETRY seconds to ride out a gateway
restart.

Constraints: Lua 5.1 (Debian's Slurm links liblua5.1): unpack() not table.unpack(), no goto. Slurm reloads
this file for every call, so nothing here keeps state between calls. Nothing is ever passed to a shell.
The values below and the gateway client are rendered in at install time by
slurmlink.slurm.plugin.render_burst_buffer_lua().
--]]

local SOCKET_PATH = @SOCKET_PATH@
local SYNC_TIMEOUT = @SYNC_TIMEOUT@
local CONNECT_RETRY = @CONNECT_RETRY@
local RELEASE_AFTER = @RELEASE_AFTER@
@GATEWAY_CLIENT@

local SLURM_API = @SLURM_API@

-- Slurm 23.02 changed get_status to (uid, gid, words...) and appended (uid, gid, job_info) elsewhere.
local API_23_02 = false
do
	local major, minor = string.match(SLURM_API, "^(%d+)%.(%d+)$")
	major, minor = tonumber(major), tonumber(minor)
	if major and (major > 23 or (major == 23 and minor >= 2)) then
		API_23_02 = true
	end
end

-- For callbacks whose success carries no message.
local function plain(operation, fields, sync)
	local body, err = call(operation, fields, sync)
	if body == nil then
		return slurm.ERROR, err
	end
	return slurm.SUCCESS
end

-- For callbacks whose success message is the body, if any.
local function with_body(operation, fields, sync)
	local body, err = call(operation, fields, sync)
	if body == nil then
		return slurm.ERROR, err
	end
	if body == "" then
		return slurm.SUCCESS
	end
	return slurm.SUCCESS, body
end

local SYNC, ASYNC = true, false

--[[ SYNC, inside slurmctld with the job write lock held, at submission. 22.05: (job_script);
     23.02+: (job_script, uid, gid, job_info). An error rejects the submission. ]]
function slurm_bb_job_process(job_script, uid, gid, job_info)
	local job_id
	if type(job_info) == "table" and job_info.job_id ~= nil then
		job_id = tostring(job_info.job_id)
	elseif job_script ~= nil then
		job_id = string.match(tostring(job_script), "job%.(%d+)/script$")
	end
	return plain("job_process", {
		{ "script", job_script }, { "job_id", job_id }, { "uid", uid }, { "gid", gid },
	}, SYNC)
end

--[[ SYNC, inside slurmctld (bb agent), at start and every ~30 s. Message = pools JSON. ]]
function slurm_bb_pools()
	return with_body("pools", {}, SYNC)
end

--[[ ASYNC, OtherTimeout. pool is "(null)" and bb_size 0 when the job asked for no capacity. ]]
function slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script, job_info)
	return plain("setup", {
		{ "job_id", job_id }, { "uid", uid }, { "gid", gid }, { "pool", pool }, { "size", bb_size },
		{ "script", job_script },
	}, ASYNC)
end

-- data_in, pre_run, post_run, data_out: (job_id, job_script[, uid, gid, job_info]).
local function stage(operation, job_id, job_script, uid, gid)
	return plain(operation, {
		{ "job_id", job_id }, { "script", job_script }, { "uid", uid }, { "gid", gid },
	}, ASYNC)
end

--[[ ASYNC, StageInTimeout. ]]
function slurm_bb_data_in(job_id, job_script, uid, gid, job_info)
	return stage("data_in", job_id, job_script, uid, gid)
end

--[[ ASYNC, OtherTimeout. The batch script starts only after this succeeds. ]]
function slurm_bb_pre_run(job_id, job_script, uid, gid, job_info)
	return stage("pre_run", job_id, job_script, uid, gid)
end

--[[ ASYNC, OtherTimeout. After the batch script ended. ]]
function slurm_bb_post_run(job_id, job_script, uid, gid, job_info)
	return stage("post_run", job_id, job_script, uid, gid)
end

--[[ ASYNC, StageOutTimeout. Right after post_run succeeded. ]]
function slurm_bb_data_out(job_id, job_script, uid, gid, job_info)
	return stage("data_out", job_id, job_script, uid, gid)
end

--[[ ASYNC, 24.05+ only. Message "BUSY" while stage-in is still running. ]]
function slurm_bb_test_data_in(job_id, job_script, uid, gid, job_info)
	return with_body("test_data_in", {
		{ "job_id", job_id }, { "script", job_script }, { "uid", uid }, { "gid", gid },
	}, ASYNC)
end

--[[ ASYNC, 24.05+ only. Message "BUSY" while stage-out is still running. ]]
function slurm_bb_test_data_out(job_id, job_script, uid, gid, job_info)
	return with_body("test_data_out", {
		{ "job_id", job_id }, { "script", job_script }, { "uid", uid }, { "gid", gid },
	}, ASYNC)
end

--[[ ASYNC, StageInTimeout; only for jobs that asked for capacity. Message = the size in decimal. ]]
function slurm_bb_real_size(job_id, uid, gid, job_info)
	local body, err = call("real_size", { { "job_id", job_id }, { "uid", uid }, { "gid", gid } }, ASYNC)
	if body == nil then
		return slurm.ERROR, err
	end
	local size = string.match(body, "^%s*(%d+)%s*$")
	if size then
		return slurm.SUCCESS, size
	end
	if string.match(body, "^%s*$") then
		return slurm.SUCCESS
	end
	local msg = string.format("slurmlink: the slurmlink gateway answered an invalid size for job %s: %q",
		tostring(job_id), string.sub(body, 1, 80))
	slurm.log_info("%s", msg)
	return slurm.ERROR, msg
end

--[[ SYNC, inside slurmctld with locks held, when the job is being started. KEY=VALUE lines written to
     path_file are added to the job's environment. ]]
function slurm_bb_paths(job_id, job_script, path_file, uid, gid, job_info)
	local body, err = call("paths", {
		{ "job_id", job_id }, { "script", job_script }, { "path_file", path_file },
		{ "uid", uid }, { "gid", gid },
	}, SYNC)
	if body == nil then
		return slurm.ERROR, err
	end
	local f, open_err = io.open(tostring(path_file), "w")
	if not f then
		local msg = string.format("slurmlink: cannot write the burst buffer paths of job %s to %s: %s",
			tostring(job_id), tostring(path_file), tostring(open_err))
		slurm.log_info("%s", msg)
		return slurm.ERROR, msg
	end
	local written, write_err = f:write(body)
	local closed, close_err = f:close()
	if not written or not closed then
		local msg = string.format("slurmlink: cannot write the burst buffer paths of job %s to %s: %s",
			tostring(job_id), tostring(path_file), tostring(write_err or close_err))
		slurm.log_info("%s", msg)
		return slurm.ERROR, msg
	end
	return slurm.SUCCESS
end

--[[ ASYNC, OtherTimeout. hurry is "true" after a cancel or a stage-in/pre-run failure. Slurm may call
     it twice for one job; the gateway makes it idempotent. ]]
function slurm_bb_job_teardown(job_id, job_script, hurry, uid, gid, job_info)
	local flag = "false"
	if tostring(hurry) == "true" then
		flag = "true"
	end
	return plain("teardown", {
		{ "job_id", job_id }, { "script", job_script }, { "hurry", flag }, { "uid", uid }, { "gid", gid },
	}, ASYNC)
end

--[[ ASYNC, OtherTimeout: "scontrol show bbstat <words>". 22.05: (words...); 23.02+: (uid, gid, words...).
     Success prints the message; an error makes scontrol print "Error running slurm_bb_get_status". ]]
function slurm_bb_get_status(...)
	local args = { ... }
	local n = select("#", ...)
	local first, uid, gid = 1, nil, nil
	if API_23_02 then
		uid, gid, first = args[1], args[2], 3
	end
	local words = {}
	for i = first, n do
		if args[i] ~= nil then
			words[#words + 1] = tostring(args[i])
		end
	end
	local body, err = call("status", {
		{ "args", table.concat(words, " ") }, { "uid", uid }, { "gid", gid },
	}, ASYNC)
	if body == nil then
		return slurm.ERROR, err
	end
	return slurm.SUCCESS, body
end
