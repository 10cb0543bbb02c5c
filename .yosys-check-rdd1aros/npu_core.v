// The edgegen NPU engine: a sequencer walking 16-word layer descriptors, LANES int8 MAC lanes,
// a drain that requantizes accumulators one lane per cycle (TFLite rounding, npu_requant), an
// optional 256-entry activation table, and TFLite's int8 ADD. See README.md for the formats.
// Timing: every memory address comes from a register or one short add of registers, address
// arithmetic is as wide as the memory it addresses (modulo 2**AW, as the memories see it), loop
// counters carry end-of-loop flags set one step ahead, and the MAC, drain, ADD and post paths are
// pipelined so that a cycle holds about one carry chain of address width or 32 bits (README, Timing).
module npu_core #(
    parameter LANES = 8,
    parameter LG = 3,          // log2(LANES)
    parameter ACT_AW = 12,
    parameter WGT_AW = 12,
    parameter PAR_AW = 9,
    parameter LUT_AW = 12,
    parameter TAP_AW = 10,
    parameter PROG_AW = 10
) (
    input  wire                  clk,
    input  wire                  rst,
    input  wire                  start,
    output reg                   busy,
    output reg                   done,
    output reg                   error,
    output reg  [31:0]           cycles,
    output reg  [31:0]           layers,
    output reg                   layer_done,   // one-cycle pulse as each layer retires
    // memories (registered read data, one cycle after the address)
    output reg  [PROG_AW-1:0]    prog_raddr,
    input  wire [31:0]           prog_rdata,
    output reg  [TAP_AW-1:0]     tap_raddr,
    input  wire [63:0]           tap_rdata,
    output reg  [WGT_AW-1:0]     wgt_raddr,
    input  wire [8*LANES-1:0]    wgt_rdata,
    output reg  [ACT_AW-1:0]     act_raddr,
    input  wire [8*LANES-1:0]    act_rdata,
    output reg                   act_re,      // act_raddr is a read whose word is used (bank checks)
    output reg                   act_we,
    output reg  [ACT_AW-1:0]     act_waddr,
    output reg  [8*LANES-1:0]    act_wdata,
    output reg  [PAR_AW-1:0]     par_raddr,
    input  wire [71:0]           par_rdata,
    output reg  [LUT_AW-1:0]     lut_raddr,
    input  wire [7:0]            lut_rdata
);
    localparam KIND_END = 4'd0, KIND_CONV = 4'd1, KIND_ADD = 4'd2, KIND_MUL = 4'd3;
    localparam S_IDLE = 4'd0, S_FETCH = 4'd1, S_LAYER = 4'd2, S_PIX0 = 4'd3, S_PIX1 = 4'd4, S_MAC = 4'd5,
               S_ADD = 4'd6, S_FLUSH = 4'd7;
    localparam [LG:0] L = LANES;
    localparam RQ_LAT = 6;                 // npu_requant: cycles from in_valid to out_valid

    reg [3:0] state;

    // ---------------------------------------------------------------- descriptor
    reg [PROG_AW-1:0] pc;
    reg [4:0]  fetch;
    reg [3:0]  kind;
    reg        dw, up, lut_en;
    reg [7:0]  stride;
    reg [LG:0] lu, lu_m1;                  // lanes in use: lanes above hold padding channels only
    reg [15:0] ih, iw;
    reg [15:0] oh_m2, ow_m2, groups_m2, cin_m2;  // loop bounds minus two
    reg [7:0]  stride_m2;
    reg        oy0_last, ox0_last, og0_last, ic0_last, p0_last;  // a loop of one iteration
    reg [ACT_AW-1:0] in_base, out_base, b_base, in_gs, out_gs, b_gs, col_step, row_step;
    reg [TAP_AW-1:0] phase_base;
    reg [PAR_AW-1:0] par_base;
    reg [LUT_AW-1:0] lut_base;
    reg signed [31:0] m_a, m_b, m_o;
    reg signed [7:0]  zp_in, zp_out, act_min, act_max, zp_b, sh_a, sh_b, sh_o;
    wire [31:0] pw_lo = {16'd0, prog_rdata[15:0]};   // 16-bit descriptor fields, zero-extended
    wire [31:0] pw_hi = {16'd0, prog_rdata[31:16]};

    // ---------------------------------------------------------------- CONV loop counters
    reg [15:0] oy, ox, py, px, og, t, ic;
    reg signed [17:0] by, bx;              // base input coordinates of the output pixel
    reg [ACT_AW-1:0] row_pix, pix;
    reg [WGT_AW-1:0] wptr;
    reg [TAP_AW-1:0] phase_row, tptr;      // tptr = tap_start + t: the tap entry being read
    reg [TAP_AW-1:0] ph_start;
    reg [15:0] ph_m2;                      // tap_count - 2
    reg        t0_last;                    // tap_count == 1
    // *_last: the counter holds its last value (kept beside each counter: no compare on the issue path)
    reg        oy_last, ox_last, py_last, px_last, og_last, t_last, ic_last;
    reg [7:0]  gap;                        // cycles since the last group-completing MAC was issued
    reg        gap_ok;                     // gap >= lu
    wire [31:0] og32 = {16'd0, og};
    wire [31:0] icw32 = {16'd0, ic} >> LG;

    wire group_end = ic_last && t_last;
    wire can_issue = !group_end || gap_ok;

    // stage A: issued op, tap entry being read
    reg        a_v, a_first, a_last, a_dw;
    reg [LG:0] a_sel;
    reg [ACT_AW-1:0] a_base;               // pixel + channel word, before the tap offset
    reg [WGT_AW-1:0] a_wptr;
    reg signed [17:0] a_by, a_bx;
    // stage Q: tap coordinates and offset address
    reg        q_v, q_first, q_last, q_dw, q_dyn, q_dxn;
    reg [LG:0] q_sel;
    reg signed [17:0] q_iy, q_ix;
    reg [ACT_AW-1:0] q_sum;
    reg [WGT_AW-1:0] q_wptr;
    // stage G: the tap's bounds
    reg        g_v, g_first, g_last, g_dw, g_dyn, g_dxn, g_yout, g_xout;
    reg [LG:0] g_sel;
    reg [ACT_AW-1:0] g_sum;
    reg [WGT_AW-1:0] g_wptr;
    // stage R: ACT and WGT addresses registered (the memories read them)
    reg        r_v, r_first, r_last, r_in, r_dw;
    reg [LG:0] r_sel;
    reg [ACT_AW-1:0] r_addr;
    reg [WGT_AW-1:0] r_wptr;
    // stage B: ACT and WGT words arrive
    reg        b_v, b_first, b_last, b_in, b_dw;
    reg [LG:0] b_sel;
    // stage X: ACT and WGT words registered (a block RAM's clock-to-out is a third of an ECP5 cycle)
    reg        x_v, x_first, x_last, x_in, x_dw;
    reg [LG:0] x_sel;
    reg [8*LANES-1:0] x_act, x_wgt;
    // stage E: multiplier operands (x - zero point, 0 for taps outside the input; weight)
    reg        e_v, e_first, e_last;
    reg signed [9:0] e_x [0:LANES-1];
    reg signed [7:0] e_w [0:LANES-1];
    // stage C: products
    reg        c_v, c_first, c_last;
    reg signed [17:0] c_prod [0:LANES-1];
    reg signed [31:0] acc [0:LANES-1];

    wire signed [7:0]  tap_dy = tap_rdata[63:56];
    wire signed [7:0]  tap_dx = tap_rdata[55:48];
    wire y_outside = (q_iy < 0) || (q_iy >= $signed({2'b00, ih}));
    wire x_outside = (q_ix < 0) || (q_ix >= $signed({2'b00, iw}));
    // edge mode: a tap one pixel outside reads the border pixel (|dy|, |dx| <= 1): undo its step
    wire [ACT_AW-1:0] edge_fix = ((edge_en && g_yout) ? (g_dyn ? row_step : -row_step) : {ACT_AW{1'b0}})
                               + ((edge_en && g_xout) ? (g_dxn ? col_step : -col_step) : {ACT_AW{1'b0}});

    // ---------------------------------------------------------------- drain: accumulators -> requantizer
    reg signed [31:0] hold [0:LANES-1];
    reg [LG:0]  hold_cnt;                  // lanes still to issue
    reg [LG:0]  d_lane;                    // next lane to issue
    reg [PAR_AW-1:0] d_par;                // its PAR entry
    // groups retire in issue order: the drain counts them for the PAR entry of the next one
    reg [PAR_AW-1:0] dr_par;               // PAR entry of the next group's lane 0
    reg [15:0]  dr_og;
    reg         dr_og_last;
    reg         r0_v, r0_last;
    reg [LG:0]  r0_lane;
    reg signed [31:0] r0_x;

    // ---------------------------------------------------------------- ADD
    localparam A_READ_A = 3'd0, A_READ_B = 3'd1, A_LATCH = 3'd2, A_ISSUE_A = 3'd3, A_ISSUE_B = 3'd4,
               A_WAIT = 3'd5, A_ISSUE_O = 3'd6;
    localparam OP_A = 2'd0, OP_B = 2'd1, OP_MUL = 2'd2, OP_SUM = 2'd3;
    reg        sub;                        // ADD: a - b
    reg        edge_en;                     // CONV: taps outside the input read its border (bilinear resize)
    reg        even;                        // requantizer rounds half to even (bilinear resize)
    wire signed [9:0] lane_a = $signed({word_a[8*add_lane+7], word_a[8*add_lane +: 8]}) - zp_in;
    wire signed [9:0] lane_b = $signed({word_b[8*add_lane+7], word_b[8*add_lane +: 8]}) - zp_b;
    reg [2:0]  add_st;
    reg [ACT_AW-1:0] a_row, b_row;         // pixel bases
    reg [ACT_AW-1:0] a_ptr, b_ptr;         // pixel base + og (the group)
    reg [LG:0] add_lane;
    reg [3:0]  add_wait, add_w0;           // A_WAIT lasts add_w0 + 1 cycles: rb of the last lane is back
    reg [8*LANES-1:0] word_a, word_b;
    reg signed [31:0] ra [0:LANES-1];
    reg signed [31:0] rb [0:LANES-1];
    // stage S: one ADD/MUL requantizer operation being formed
    reg        s_v;
    reg [1:0]  s_op;
    reg signed [9:0] s_a, s_b;
    reg [LG:0] s_lane;
    reg signed [31:0] s_m;
    reg signed [7:0]  s_sh;

    // ---------------------------------------------------------------- requantizer and post stage
    // tag: {dest(2): 0 out 1 ra 2 rb, last(1), lane(LG+1)}
    localparam TW = 2 + 1 + LG + 1;
    reg               rq_v;
    reg signed [31:0] rq_x, rq_m;
    reg signed [7:0]  rq_sh;
    reg [TW-1:0]      rq_tag, s_tag;
    wire              rq_ov;
    wire signed [31:0] rq_y;
    wire [TW-1:0]     rq_otag;
    wire              rq_busy;
    npu_requant #(.TW(TW)) requant (.clk(clk), .rst(rst), .in_valid(rq_v), .even(even), .x(rq_x), .m(rq_m), .sh(rq_sh),
        .in_tag(rq_tag), .out_valid(rq_ov), .y(rq_y), .out_tag(rq_otag), .busy(rq_busy));

    wire [1:0]  o_dest = rq_otag[TW-1:TW-2];
    wire [LG:0] o_lane = rq_otag[LG:0];
    // post stage: Z adds the output zero point, K saturates to int8 (a value outside int8 is past both
    // bounds), P clamps and addresses the table, W packs the table's (or the clamped) byte into the word
    reg         z_v, z_last;
    reg [LG:0]  z_lane;
    reg signed [31:0] z_val;
    wire        z_fits = (z_val[31:7] == 25'd0) || (z_val[31:7] == {25{1'b1}});
    reg         k_v, k_last;
    reg [LG:0]  k_lane;
    reg signed [7:0] k_sat;
    wire signed [7:0] k_c = (k_sat < act_min) ? act_min : ((k_sat > act_max) ? act_max : k_sat);
    reg         p_v, p_last;
    reg [LG:0]  p_lane;
    reg [7:0]   p_byte;
    reg [LUT_AW-1:0] p_lut;
    reg [8*LANES-1:0] pack;
    reg         w_v, w_last;
    reg [LG:0]  w_lane;
    reg [7:0]   w_byte;
    // words are written in the order they were issued (pixel by pixel, group by group, every layer
    // kind): the write address is a counter here, not a tag carried through the pipelines
    reg [ACT_AW-1:0] wr_ptr, wr_row;
    reg [15:0]  wr_og;
    reg         wr_og_last;
    wire [7:0]  w_result = lut_en ? lut_rdata : w_byte;

    wire pipe_busy = a_v | q_v | g_v | r_v | b_v | x_v | e_v | c_v | (hold_cnt != 0) | r0_v | s_v | rq_v | rq_busy | z_v | k_v | p_v | w_v;

    // read addresses: presented from registers (or one short add of them), data registered by the RAM
    always @* begin
        prog_raddr = pc + {{(PROG_AW-4){1'b0}}, fetch[3:0]};
        tap_raddr = (state == S_PIX0) ? (phase_base + phase_row + px[TAP_AW-1:0]) : tptr;
        wgt_raddr = r_wptr;
        act_raddr = (state != S_ADD) ? r_addr : (add_st == A_READ_A) ? a_ptr : b_ptr;
        act_re = (state != S_ADD) ? (r_v && r_in) : (add_st == A_READ_A || add_st == A_READ_B);
        par_raddr = d_par;
        lut_raddr = p_lut;
    end

    integer l;

    always @(posedge clk) begin
        // defaults
        act_we <= 1'b0;
        rq_v <= 1'b0;
        s_v <= 1'b0;
        a_v <= 1'b0;
        layer_done <= 1'b0;
        if (rst) begin
            state <= S_IDLE; busy <= 1'b0; done <= 1'b0; error <= 1'b0; cycles <= 32'd0; layers <= 32'd0;
            a_v <= 1'b0; q_v <= 1'b0; g_v <= 1'b0; r_v <= 1'b0; b_v <= 1'b0; x_v <= 1'b0; e_v <= 1'b0; c_v <= 1'b0; hold_cnt <= 0;
            r0_v <= 1'b0; z_v <= 1'b0; k_v <= 1'b0; p_v <= 1'b0; w_v <= 1'b0;
        end else begin
            if (busy) cycles <= cycles + 32'd1;
            if (gap != 8'hff) gap <= gap + 8'd1;
            gap_ok <= gap >= lu_m1;

            // ---------------- sequencer
            case (state)
            S_IDLE: if (start) begin
                busy <= 1'b1; done <= 1'b0; error <= 1'b0; cycles <= 32'd0; layers <= 32'd0;
                pc <= 0; fetch <= 5'd0; state <= S_FETCH;
            end
            S_FETCH: begin
                fetch <= fetch + 5'd1;
                if (fetch != 5'd0) begin
                    case (fetch - 5'd1)
                    5'd0: begin kind <= prog_rdata[3:0]; dw <= prog_rdata[4]; up <= prog_rdata[5];
                                lut_en <= prog_rdata[6]; sub <= prog_rdata[7]; stride <= prog_rdata[15:8];
                                stride_m2 <= prog_rdata[15:8] - 8'd2; p0_last <= prog_rdata[15:8] == 8'd1;
                                edge_en <= prog_rdata[24]; even <= prog_rdata[25];
                                lu <= (prog_rdata[23:16] == 8'd0 || prog_rdata[23:16] > L) ? L : prog_rdata[LG+16:16];
                                lu_m1 <= (prog_rdata[23:16] == 8'd0 || prog_rdata[23:16] > L) ? L - 1'b1
                                       : prog_rdata[LG+16:16] - 1'b1; end
                    5'd1: begin oh_m2 <= prog_rdata[15:0] - 16'd2; ow_m2 <= prog_rdata[31:16] - 16'd2;
                                oy0_last <= prog_rdata[15:0] == 16'd1; ox0_last <= prog_rdata[31:16] == 16'd1; end
                    5'd2: begin ih <= prog_rdata[15:0]; iw <= prog_rdata[31:16]; end
                    5'd3: begin groups_m2 <= prog_rdata[15:0] - 16'd2; og0_last <= prog_rdata[15:0] == 16'd1;
                                cin_m2 <= prog_rdata[31:16] - 16'd2; ic0_last <= dw || prog_rdata[31:16] == 16'd1; end
                    5'd4: in_base <= prog_rdata[ACT_AW-1:0];
                    5'd5: begin in_gs <= pw_lo[ACT_AW-1:0]; out_gs <= pw_hi[ACT_AW-1:0]; end
                    5'd6: out_base <= prog_rdata[ACT_AW-1:0];
                    5'd7: begin phase_base <= prog_rdata[TAP_AW-1:0]; sh_a <= prog_rdata[7:0]; sh_b <= prog_rdata[15:8];
                                sh_o <= prog_rdata[23:16]; end
                    5'd8: par_base <= prog_rdata[PAR_AW-1:0];
                    5'd9: lut_base <= prog_rdata[LUT_AW-1:0];
                    5'd10: begin zp_in <= prog_rdata[7:0]; zp_out <= prog_rdata[15:8];
                                 act_min <= prog_rdata[23:16]; act_max <= prog_rdata[31:24]; end
                    5'd11: begin col_step <= prog_rdata[ACT_AW-1:0]; b_base <= prog_rdata[ACT_AW-1:0]; end
                    5'd12: begin row_step <= prog_rdata[ACT_AW-1:0]; b_gs <= pw_lo[ACT_AW-1:0];
                                 zp_b <= prog_rdata[23:16]; end
                    5'd13: m_a <= prog_rdata;
                    5'd14: m_b <= prog_rdata;
                    5'd15: begin m_o <= prog_rdata; state <= S_LAYER; end
                    default: ;
                    endcase
                end
            end
            S_LAYER: begin
                oy <= 0; ox <= 0; py <= 0; px <= 0; by <= 0; bx <= 0; phase_row <= 0; og <= 0;
                oy_last <= oy0_last; ox_last <= ox0_last; py_last <= p0_last; px_last <= p0_last; og_last <= og0_last;
                row_pix <= in_base; pix <= in_base;
                add_st <= A_READ_A; a_row <= in_base; b_row <= b_base; a_ptr <= in_base; b_ptr <= b_base;
                wr_ptr <= out_base; wr_row <= out_base; wr_og <= 0; wr_og_last <= og0_last;
                dr_par <= par_base; dr_og <= 0; dr_og_last <= og0_last;
                // ISSUE_O of lane l reads rb[l] lu + add_w0 + 2 cycles after issuing it: >= RQ_LAT + 3
                add_w0 <= ({{(31-LG){1'b0}}, lu_m1} >= RQ_LAT) ? 4'd0 : RQ_LAT - lu_m1;
                gap <= 8'hff; gap_ok <= 1'b1;
                if (kind == KIND_CONV) state <= S_PIX0;
                else if (kind == KIND_ADD || kind == KIND_MUL) state <= S_ADD;
                else if (kind == KIND_END) begin state <= S_IDLE; busy <= 1'b0; done <= 1'b1; end
                else begin state <= S_IDLE; busy <= 1'b0; done <= 1'b1; error <= 1'b1; end
            end
            S_PIX0: begin  // the phase entry of this output pixel is being read
                state <= S_PIX1;
            end
            S_PIX1: begin  // the phase entry arrives: tap_start, tap_count, weight base
                ph_start <= tap_rdata[TAP_AW+47:48];
                tptr <= tap_rdata[TAP_AW+47:48];
                ph_m2 <= tap_rdata[47:32] - 16'd2;
                t0_last <= tap_rdata[47:32] == 16'd1;
                wptr <= tap_rdata[WGT_AW-1:0];
                og <= 0; t <= 0; ic <= 0;
                og_last <= og0_last; t_last <= tap_rdata[47:32] == 16'd1; ic_last <= ic0_last;
                state <= S_MAC;
            end
            S_MAC: if (can_issue) begin
                // issue one MAC cycle: the tap entry for (t) is being read
                a_v <= 1'b1; a_first <= (t == 0) && (ic == 0); a_last <= group_end; a_dw <= dw;
                a_sel <= ic[LG:0] & (L - 1);
                a_base <= pix + (dw ? og32[ACT_AW-1:0] : icw32[ACT_AW-1:0]);
                a_wptr <= wptr; a_by <= by; a_bx <= bx;
                if (group_end) begin gap <= 8'd1; gap_ok <= lu_m1 == 0; end
                wptr <= wptr + 1'b1;
                // advance ic -> t -> og -> pixel
                if (!ic_last) begin
                    ic <= ic + 16'd1; ic_last <= ic == cin_m2;
                end else if (!t_last) begin
                    ic <= 0; ic_last <= ic0_last; t <= t + 16'd1; t_last <= t == ph_m2; tptr <= tptr + 1'b1;
                end else if (!og_last) begin
                    ic <= 0; ic_last <= ic0_last; t <= 0; t_last <= t0_last; tptr <= ph_start;
                    og <= og + 16'd1; og_last <= og == groups_m2;
                end else begin
                    // next output pixel
                    if (!ox_last) begin
                        ox <= ox + 16'd1; ox_last <= ox == ow_m2;
                        if (!up) begin bx <= bx + stride; pix <= pix + col_step; end
                        else if (px_last) begin
                            px <= 0; px_last <= p0_last; bx <= bx + 18'sd1; pix <= pix + col_step;
                        end
                        else begin px <= px + 16'd1; px_last <= px[7:0] == stride_m2; end
                        state <= S_PIX0;
                    end else begin
                        ox <= 0; ox_last <= ox0_last; px <= 0; px_last <= p0_last; bx <= 0;
                        if (oy_last) state <= S_FLUSH;
                        else begin
                            oy <= oy + 16'd1; oy_last <= oy == oh_m2;
                            state <= S_PIX0;
                            if (!up) begin by <= by + stride; row_pix <= row_pix + row_step; pix <= row_pix + row_step; end
                            else if (py_last) begin
                                py <= 0; py_last <= p0_last; phase_row <= 0; by <= by + 18'sd1;
                                row_pix <= row_pix + row_step; pix <= row_pix + row_step;
                            end else begin
                                py <= py + 16'd1; py_last <= py[7:0] == stride_m2; phase_row <= phase_row + stride;
                                pix <= row_pix;
                            end
                        end
                    end
                end
            end
            S_ADD: begin
                case (add_st)
                A_READ_A: add_st <= A_READ_B;
                A_READ_B: begin word_a <= act_rdata; add_st <= A_LATCH; end
                A_LATCH: begin word_b <= act_rdata; add_st <= (kind == KIND_MUL) ? A_ISSUE_O : A_ISSUE_A;
                               add_lane <= 0; end
                A_ISSUE_A: begin
                    s_v <= 1'b1; s_op <= OP_A; s_a <= lane_a; s_m <= m_a; s_sh <= sh_a;
                    s_tag <= {2'd1, 1'b0, add_lane};
                    add_lane <= add_lane + 1'b1;
                    if (add_lane == lu_m1) begin add_lane <= 0; add_st <= A_ISSUE_B; end
                end
                A_ISSUE_B: begin
                    s_v <= 1'b1; s_op <= OP_B; s_b <= lane_b; s_m <= m_b; s_sh <= sh_b;
                    s_tag <= {2'd2, 1'b0, add_lane};
                    add_lane <= add_lane + 1'b1;
                    if (add_lane == lu_m1) begin add_lane <= 0; add_st <= A_WAIT; add_wait <= add_w0; end
                end
                A_WAIT: begin
                    add_wait <= add_wait - 4'd1;
                    if (add_wait == 0) add_st <= A_ISSUE_O;
                end
                A_ISSUE_O: begin
                    s_v <= 1'b1; s_op <= (kind == KIND_MUL) ? OP_MUL : OP_SUM; s_a <= lane_a; s_b <= lane_b;
                    s_lane <= add_lane; s_m <= m_o; s_sh <= sh_o;
                    s_tag <= {2'd0, add_lane == lu_m1, add_lane};
                    add_lane <= add_lane + 1'b1;
                    if (add_lane == lu_m1) begin
                        add_lane <= 0;
                        add_st <= A_READ_A;
                        if (!og_last) begin
                            og <= og + 16'd1; og_last <= og == groups_m2;
                            a_ptr <= a_ptr + 1'b1; b_ptr <= b_ptr + 1'b1;
                        end else begin
                            og <= 0; og_last <= og0_last;
                            a_row <= a_row + in_gs; b_row <= b_row + b_gs;
                            a_ptr <= a_row + in_gs; b_ptr <= b_row + b_gs;
                            if (!ox_last) begin ox <= ox + 16'd1; ox_last <= ox == ow_m2; end
                            else begin
                                ox <= 0; ox_last <= ox0_last;
                                if (oy_last) state <= S_FLUSH;
                                else begin oy <= oy + 16'd1; oy_last <= oy == oh_m2; end
                            end
                        end
                    end
                end
                default: add_st <= A_READ_A;
                endcase
            end
            S_FLUSH: if (!pipe_busy) begin
                layers <= layers + 32'd1;
                layer_done <= 1'b1;
                pc <= pc + 16; fetch <= 5'd0; state <= S_FETCH;
            end
            default: state <= S_IDLE;
            endcase

            // ---------------- MAC pipeline (CONV): A tap entry -> Q coordinates -> G bounds -> R addresses
            //                  -> B words -> X words registered -> E operands -> C products -> accumulators
            q_v <= a_v;
            if (a_v) begin
                q_first <= a_first; q_last <= a_last; q_dw <= a_dw; q_sel <= a_sel;
                q_iy <= a_by + tap_dy; q_ix <= a_bx + tap_dx; q_dyn <= tap_dy[7]; q_dxn <= tap_dx[7];
                q_sum <= a_base + tap_rdata[ACT_AW-1:0];
                q_wptr <= a_wptr;
            end
            g_v <= q_v;
            if (q_v) begin
                g_first <= q_first; g_last <= q_last; g_dw <= q_dw; g_sel <= q_sel;
                g_yout <= y_outside; g_xout <= x_outside; g_dyn <= q_dyn; g_dxn <= q_dxn;
                g_sum <= q_sum; g_wptr <= q_wptr;
            end
            r_v <= g_v;
            if (g_v) begin
                r_first <= g_first; r_last <= g_last; r_dw <= g_dw; r_sel <= g_sel;
                r_in <= edge_en || (!g_yout && !g_xout);
                r_addr <= g_sum + edge_fix;
                r_wptr <= g_wptr;
            end
            b_v <= r_v;
            if (r_v) begin
                b_first <= r_first; b_last <= r_last; b_in <= r_in; b_dw <= r_dw;
                b_sel <= r_sel;
            end
            x_v <= b_v;
            if (b_v) begin
                x_first <= b_first; x_last <= b_last; x_in <= b_in; x_dw <= b_dw; x_sel <= b_sel;
                x_act <= act_rdata; x_wgt <= wgt_rdata;
            end
            e_v <= x_v;
            if (x_v) begin
                e_first <= x_first; e_last <= x_last;
                for (l = 0; l < LANES; l = l + 1) begin
                    e_x[l] <= !x_in ? 10'sd0
                            : x_dw ? $signed({x_act[8*l+7], x_act[8*l +: 8]}) - zp_in
                                   : $signed({x_act[8*x_sel+7], x_act[8*x_sel +: 8]}) - zp_in;
                    e_w[l] <= x_wgt[8*l +: 8];
                end
            end
            c_v <= e_v;
            if (e_v) begin
                c_first <= e_first; c_last <= e_last;
                for (l = 0; l < LANES; l = l + 1)
                    c_prod[l] <= e_x[l] * e_w[l];
            end
            // ---------------- drain: one lane per cycle into the requantizer (bias, multiplier, shift from PAR)
            r0_v <= 1'b0;
            if (hold_cnt != 0) begin
                r0_v <= 1'b1; r0_x <= hold[d_lane]; r0_lane <= d_lane;
                r0_last <= (hold_cnt == 1);
                hold_cnt <= hold_cnt - 1'b1; d_lane <= d_lane + 1'b1; d_par <= d_par + 1'b1;
            end
            if (c_v) begin
                for (l = 0; l < LANES; l = l + 1)
                    acc[l] <= (c_first ? 32'sd0 : acc[l]) + c_prod[l];
                if (c_last) begin
                    if (hold_cnt > 1) error <= 1'b1;  // the drain would lose a group: never happens by construction
                    for (l = 0; l < LANES; l = l + 1)
                        hold[l] <= (c_first ? 32'sd0 : acc[l]) + c_prod[l];
                    hold_cnt <= lu; d_lane <= 0; d_par <= dr_par;
                    if (!dr_og_last) begin
                        dr_og <= dr_og + 16'd1; dr_og_last <= dr_og == groups_m2; dr_par <= dr_par + L;
                    end else begin
                        dr_og <= 0; dr_og_last <= og0_last; dr_par <= par_base;
                    end
                end
            end

            if (r0_v) begin
                rq_v <= 1'b1;
                rq_x <= r0_x + $signed(par_rdata[31:0]);
                rq_m <= par_rdata[63:32];
                rq_sh <= par_rdata[71:64];
                rq_tag <= {2'd0, r0_last, r0_lane};
            end
            // ADD / MUL operations formed in stage S
            if (s_v) begin
                rq_v <= 1'b1;
                case (s_op)
                OP_A: rq_x <= s_a <<< 20;
                OP_B: rq_x <= s_b <<< 20;
                OP_MUL: rq_x <= s_a * s_b;
                default: rq_x <= sub ? ra[s_lane] - rb[s_lane] : ra[s_lane] + rb[s_lane];
                endcase
                rq_m <= s_m; rq_sh <= s_sh; rq_tag <= s_tag;
            end

            // ---------------- results: ADD operands, or output bytes through the table into ACT words
            z_v <= 1'b0;
            if (rq_ov) begin
                if (o_dest == 2'd1) ra[o_lane] <= rq_y;
                else if (o_dest == 2'd2) rb[o_lane] <= rq_y;
                else begin
                    z_v <= 1'b1; z_lane <= o_lane; z_last <= rq_otag[TW-3];
                    z_val <= rq_y + zp_out;
                end
            end
            k_v <= z_v;
            if (z_v) begin
                k_lane <= z_lane; k_last <= z_last;
                k_sat <= z_fits ? z_val[7:0] : (z_val[31] ? 8'sh80 : 8'sh7f);
            end
            p_v <= k_v;
            if (k_v) begin
                p_lane <= k_lane; p_last <= k_last; p_byte <= k_c;
                p_lut <= lut_base + {{(LUT_AW-8){1'b0}}, ~k_c[7], k_c[6:0]};
            end
            w_v <= p_v;
            if (p_v) begin
                w_lane <= p_lane; w_last <= p_last; w_byte <= p_byte;
            end
            if (w_v) begin
                pack[8*w_lane +: 8] <= w_result;
                if (w_last) begin
                    act_we <= 1'b1; act_waddr <= wr_ptr;
                    act_wdata <= pack;
                    act_wdata[8*w_lane +: 8] <= w_result;
                    if (!wr_og_last) begin
                        wr_og <= wr_og + 16'd1; wr_og_last <= wr_og == groups_m2; wr_ptr <= wr_ptr + 1'b1;
                    end else begin
                        wr_og <= 0; wr_og_last <= og0_last; wr_row <= wr_row + out_gs; wr_ptr <= wr_row + out_gs;
                    end
                end
            end
        end
    end
endmodule
