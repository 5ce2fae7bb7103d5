--[[
job_submit.lua -- slurmlink's bank check for Slurm's job_submit/lua plugin (JobSubmitPlugins=lua).

At every submission slurmctld runs slurm_job_submit with its job lock held, so nothing here may wait on
the network. The job's fields go to the local slurmlink gateway over a Unix socket (a sub-millisecond
round trip, one attempt, hard deadline SYNC_TIMEOUT), which prices the job with the bank's current rate
card and compares it with the account's balance less what its pending jobs may still spend, all from
its memory (refreshed every few seconds from the bank and from one squeue). An accepted job gets the
estimate and the gateway's acceptance token in its AdminComment (which users cannot change): that is how
the gateway recognises it in the queue.

A job over budget is rejected with the gateway's message, which sbatch prints ("sbatch: error: ...").
If the gateway cannot be asked, ON_UNREACHABLE decides ("allow": the hold placed when the job starts still
keeps the account from being overdrawn; "deny"). Lua 5.1; nothing is passed to a shell.
--]]

local SOCKET_PATH = @SOCKET_PATH@
local SYNC_TIMEOUT = @SYNC_TIMEOUT@
local CONNECT_RETRY = @CONNECT_RETRY@
local ON_UNREACHABLE = @ON_UNREACHABLE@
@GATEWAY_CLIENT@

local SYNC = true
local JOB_PENDING = 0
local JOB_RUNNING = 1
local TAG = "slurmlink-bank:estimate="
-- TAG as a Lua pattern ("-" is a quantifier there).
local TAG_PATTERN = "slurmlink%-bank:estimate="

-- The stamp is "slurmlink-bank:estimate=<per task>:<token>"; the gateway's tokens grow with every job it
-- accepts.
local function token_of(comment)
	if comment == nil then
		return nil
	end
	return string.match(tostring(comment), TAG_PATTERN .. "[%d%.]+:(%d+)")
end

local function with_estimate(comment, per_task, token)
	local base = ""
	if comment ~= nil then
		base = string.gsub(tostring(comment), "%s*" .. TAG_PATTERN .. "[%d%.]+:?%d*", "")
	end
	if base ~= "" then
		base = base .. " "
	end
	if token ~= nil and token ~= "" then
		return base .. TAG .. per_task .. ":" .. token
	end
	return base .. TAG .. per_task
end

-- Slurm hands unset strings over as nil or "".
local function given(value)
	if value == nil or value == "" then
		return nil
	end
	return value
end

local FIELDS = {
	"partition", "account", "default_account", "user_id", "num_tasks", "cpus_per_task", "min_cpus",
	"min_nodes", "ntasks_per_node", "time_limit", "shared", "tres_per_node", "tres_per_job",
	"tres_per_task", "min_mem_per_node", "min_mem_per_cpu", "qos", "default_qos", "array_inx",
}

-- Asks the gateway; returns (true, per_task, total) to accept, (false, message) to reject, or
-- (nil, message) when the gateway could not answer.
local function check(job_desc, fallback, skip_job)
	local fields = {}
	for _, name in ipairs(FIELDS) do
		local value = job_desc[name]
		if value == nil and fallback ~= nil then
			value = fallback[name]
		end
		fields[#fields + 1] = { name, value }
	end
	if skip_job ~= nil then
		fields[#fields + 1] = { "modify_job", skip_job }
	end
	local code, body = request("bank_submit", fields, SYNC)
	if code == nil then
		return nil, body
	end
	if code == 200 then
		local per_task, token = string.match(body, "^accept ([%d%.]+) [%d%.]+ ?(%d*)")
		if per_task then
			return true, per_task, token
		end
		return nil, "slurmlink: unreadable answer from the gateway: " .. string.sub(body, 1, 80)
	end
	if code == 402 or code == 400 or code == 404 then
		return false, body
	end
	return nil, string.format("slurmlink gateway: HTTP %d: %s", code, body)
end

local function unreachable(message)
	slurm.log_error("%s [bank_submit]", message)
	if ON_UNREACHABLE == "deny" then
		slurm.log_user("slurmlink bank: cannot check this job's cost now (%s); try again shortly", message)
		return slurm.ERROR
	end
	return slurm.SUCCESS
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local ok, per_task, token = check(job_desc, nil, nil)
	if ok == nil then
		return unreachable(per_task)
	end
	if not ok then
		slurm.log_user("%s", per_task)
		return slurm.ESLURM_ACCOUNTING_POLICY
	end
	job_desc.admin_comment = with_estimate(job_desc.admin_comment, per_task, token)
	return slurm.SUCCESS
end

-- A running job's longer time limit: its account must cover what the job may now cost more, and the
-- gateway then raises the run's hold (after this returns: nothing here waits for the bank).
local function extend(job_desc, job_rec)
	local limit = tonumber(job_desc.time_limit)
	local old = tonumber(job_rec.time_limit)
	if limit == nil or limit == slurm.NO_VAL or old == nil or limit <= old then
		return slurm.SUCCESS
	end
	local fields = {}
	for _, name in ipairs(FIELDS) do
		local value = job_desc[name]
		if value == nil then
			value = job_rec[name]
		end
		fields[#fields + 1] = { name, value }
	end
	fields[#fields + 1] = { "job_id", job_rec.job_id }
	fields[#fields + 1] = { "old_time_limit", old }
	local code, body = request("bank_extend", fields, SYNC)
	if code == nil then
		return unreachable(body)
	end
	if code == 200 then
		return slurm.SUCCESS
	end
	if code == 402 or code == 400 or code == 404 then
		slurm.log_info("slurmlink bank: refused change of job %s: %s", tostring(job_rec.job_id), body)
		return slurm.ESLURM_ACCOUNTING_POLICY
	end
	return unreachable(string.format("slurmlink gateway: HTTP %d: %s", code, body))
end

-- A pending job's new time limit, partition or size is priced again; a running job's longer time limit
-- is held for (log_user is not available here in 22.05: a refusal's reason goes to slurmctld's log).
function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	if job_rec == nil then
		return slurm.SUCCESS
	end
	local state = (tonumber(job_rec.job_state) or -1) % 256
	if state == JOB_RUNNING then
		return extend(job_desc, job_rec)
	end
	if state ~= JOB_PENDING then
		return slurm.SUCCESS
	end
	local changed = job_desc.time_limit ~= nil and job_desc.time_limit ~= slurm.NO_VAL
		or job_desc.partition ~= nil
		or (job_desc.num_tasks ~= nil and job_desc.num_tasks ~= slurm.NO_VAL)
		or (job_desc.min_nodes ~= nil and job_desc.min_nodes ~= slurm.NO_VAL)
	if not changed then
		return slurm.SUCCESS
	end
	local ok, per_task = check(job_desc, job_rec, job_rec.job_id)
	if ok == nil then
		return unreachable(per_task)
	end
	if not ok then
		slurm.log_info("slurmlink bank: refused change of job %s: %s", tostring(job_rec.job_id), per_task)
		return slurm.ESLURM_ACCOUNTING_POLICY
	end
	job_desc.admin_comment = with_estimate(job_rec.admin_comment, per_task, token_of(job_rec.admin_comment))
	return slurm.SUCCESS
end
